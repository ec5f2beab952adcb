/* Viterbi decoding of a linear-chain CRF, one fused max-sum pass per step (compiled on first use, see
 * viterbi_native.py).
 *
 * emissions (B, T, K) float32, transitions (K, K) float32 [from, to], start/end (K,) float32, lengths (B,) int64
 * (right padding), scores (T, K) float32 scratch, paths (B, T) int64 (entries past a sequence's length are left
 * alone). Per step: best[j] = max_i (score[i] + trans[i][j]), then + emission[j]: the rounding of a (score +
 * transition) max followed by adding the emission. The forward pass keeps only the scores; the backtrack
 * recomputes the argmax along the chosen path, keeping the first maximal i (the tie rule of torch's argmax).
 */
#include <stdint.h>

static int64_t best_previous(const float *previous, const float *transitions, int64_t tags, int64_t to) {
    int64_t best = 0;
    float best_score = previous[0] + transitions[to];
    for (int64_t i = 1; i < tags; ++i) {
        float candidate = previous[i] + transitions[i * tags + to];
        if (candidate > best_score) { best_score = candidate; best = i; }
    }
    return best;
}

void fusion_viterbi(const float *emissions, const float *transitions, const float *start, const float *end,
                    const int64_t *lengths, int64_t batch, int64_t steps, int64_t tags, float *scores,
                    int64_t *paths) {
    for (int64_t b = 0; b < batch; ++b) {
        const float *em = emissions + b * steps * tags;
        int64_t length = lengths[b];
        if (length <= 0) continue;
        for (int64_t j = 0; j < tags; ++j) scores[j] = em[j] + start[j];
        for (int64_t t = 1; t < length; ++t) {
            const float *score = scores + (t - 1) * tags;
            float *next = scores + t * tags;
            for (int64_t j = 0; j < tags; ++j) next[j] = score[0] + transitions[j];
            for (int64_t i = 1; i < tags; ++i) {
                const float *row = transitions + i * tags;
                float from = score[i];
                for (int64_t j = 0; j < tags; ++j) {
                    float candidate = from + row[j];
                    next[j] = candidate > next[j] ? candidate : next[j];
                }
            }
            const float *emission = em + t * tags;
            for (int64_t j = 0; j < tags; ++j) next[j] += emission[j];
        }
        const float *last = scores + (length - 1) * tags;
        int64_t best = 0;
        float best_score = last[0] + end[0];
        for (int64_t j = 1; j < tags; ++j) {
            float candidate = last[j] + end[j];
            if (candidate > best_score) { best_score = candidate; best = j; }
        }
        int64_t *path = paths + b * steps;
        path[length - 1] = best;
        for (int64_t t = length - 1; t > 0; --t) {
            best = best_previous(scores + (t - 1) * tags, transitions, tags, best);
            path[t - 1] = best;
        }
    }
}
