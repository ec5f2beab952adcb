"""Cross-modal retrieval and zero-shot classification in a shared embedding space.

Instance level: query i's match is gallery item i (the same example). Class level: any gallery item with
the query's label is a match (the right notion when pairs were drawn at random within a class, e.g. an
MNIST image paired with an FSDD recording of the same digit). Ranks are 1-based and count the gallery items
scoring strictly higher than the best match.
"""

import itertools

import torch
import torch.nn.functional as F


def match_ranks(similarity: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """Rank of the best-scoring match of every query.

    Args:
        similarity: (Q, G) query-gallery scores.
        matches: (Q, G) bool, True where the gallery item matches the query; every row needs one.

    Returns:
        (Q,) long ranks, 1 = a match is the top result.
    """
    if not bool(matches.any(dim=1).all()):
        raise ValueError("every query needs at least one matching gallery item")
    best = similarity.masked_fill(~matches, float("-inf")).amax(dim=1, keepdim=True)  # (Q, 1)
    return (similarity > best).sum(dim=1) + 1  # (Q,)


def recall_at_k(ranks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Fraction of queries whose rank is at most k, as ``{"Rk": ...}``."""
    return {f"R{k}": (ranks <= k).float().mean().item() for k in ks}


def retrieval_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Instance-level (and, with labels, class-level) recall and median rank of one direction.

    Args:
        queries: (N, D) embeddings; row i is paired with gallery row i.
        gallery: (N, D) embeddings.
        query_labels: (N,) class ids of the queries, for class-level metrics.
        gallery_labels: (N,) class ids of the gallery items; defaults to ``query_labels``.
        ks: the k of Rk.

    Returns:
        ``Rk``, ``median_rank`` and, with labels, ``class_Rk``, ``class_median_rank``.
    """
    if queries.shape != gallery.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and gallery {tuple(gallery.shape)} must be paired")
    similarity = F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T  # (N, N)
    n = similarity.shape[0]
    ranks = match_ranks(similarity, torch.eye(n, dtype=torch.bool, device=similarity.device))
    out = recall_at_k(ranks, ks) | {"median_rank": ranks.float().median().item()}
    if query_labels is not None:
        gallery_labels = query_labels if gallery_labels is None else gallery_labels
        same_class = query_labels[:, None] == gallery_labels[None, :]  # (N, N)
        class_ranks = match_ranks(similarity, same_class)
        out |= {f"class_{key}": value for key, value in recall_at_k(class_ranks, ks).items()}
        out["class_median_rank"] = class_ranks.float().median().item()
    return out


def matched_cosine(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean cosine of matched pairs (a_i, b_i) and of unmatched pairs (a_i, b_j), i != j.

    Args:
        a: (N, D) embeddings, N >= 2.
        b: (N, D) embeddings paired row by row with ``a``.
    """
    cos = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # (N, N)
    n = cos.shape[0]
    if n < 2:
        raise ValueError("matched vs unmatched cosine needs at least two pairs")
    diagonal = cos.diagonal()
    return {
        "matched_cos": diagonal.mean().item(),
        "unmatched_cos": ((cos.sum() - diagonal.sum()) / (n * n - n)).item(),
    }


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised mean embedding of every class.

    Args:
        embeddings: (N, D).
        labels: (N,) class ids in [0, num_classes); every class needs an example.

    Returns:
        (C, D) unit-norm prototypes.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if counts.numel() != num_classes or bool((counts == 0).any()):
        raise ValueError(
            f"class_prototypes: classes without examples or out of range: counts {counts.tolist()}"
        )
    sums = torch.zeros(num_classes, embeddings.shape[1], device=embeddings.device)
    sums.index_add_(0, labels, F.normalize(embeddings.float(), dim=-1))  # (C, D)
    return F.normalize(sums, dim=-1)


def prompt_prototypes(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """Class prototypes from several text prompts per class (prompt ensembling, as in CLIP).

    Args:
        prompt_embeddings: (C, P, D) embeddings of P prompts for each of C classes.

    Returns:
        (C, D) unit-norm prototypes.
    """
    return F.normalize(F.normalize(prompt_embeddings.float(), dim=-1).mean(dim=1), dim=-1)


def zero_shot_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> float:
    """Accuracy of nearest-prototype (cosine) classification.

    Args:
        embeddings: (N, D).
        labels: (N,) class ids.
        prototypes: (C, D), one per class.
    """
    scores = F.normalize(embeddings.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T  # (N, C)
    return (scores.argmax(dim=1) == labels).float().mean().item()


def alignment_report(
    embeddings: dict[str, torch.Tensor],
    mask: dict[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Retrieval in both directions and matched/unmatched cosine for every pair of modalities.

    Args:
        embeddings: modality -> (N, D); row i of every modality is example i.
        mask: modality -> (N,) bool, True where present; a pair uses rows where both are present.
        labels: (N,) class ids for class-level metrics.
        ks: the k of Rk.

    Returns:
        Flat ``{"<q>_to_<g>/R1": ..., "<a>_<b>/matched_cos": ..., "mean/class_R1": ...}``; ``mean/*``
        averages a metric over all directions. Pairs with fewer than two present rows are left out.
    """
    out: dict[str, float] = {}
    for a, b in itertools.combinations(sorted(embeddings), 2):
        both = mask[a] & mask[b]  # (N,)
        if int(both.sum()) < 2:
            continue
        za, zb = embeddings[a][both], embeddings[b][both]
        pair_labels = None if labels is None else labels[both]
        for q, g, zq, zg in ((a, b, za, zb), (b, a, zb, za)):
            metrics = retrieval_metrics(zq, zg, pair_labels, ks=ks)
            out |= {f"{q}_to_{g}/{key}": value for key, value in metrics.items()}
        out |= {f"{a}_{b}/{key}": value for key, value in matched_cosine(za, zb).items()}
    directions = [key.split("/", 1)[1] for key in out if "_to_" in key]
    for metric in sorted(set(directions)):
        values = [v for k, v in out.items() if "_to_" in k and k.endswith("/" + metric)]
        out[f"mean/{metric}"] = sum(values) / len(values)
    return out
