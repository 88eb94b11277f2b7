"""services/profile/clustering.py on generated data with a known structure."""

import numpy as np
import pytest

from services.profile.clustering import MISSING, Column, assign, cluster


def _blobs(centres, per=60, seed=1, spread=1.0):
    rng = np.random.default_rng(seed)
    x, y, truth = [], [], []
    for label, (cx, cy) in enumerate(centres):
        x += list(rng.normal(cx, spread, per))
        y += list(rng.normal(cy, spread, per))
        truth += [label] * per
    return x, y, truth


@pytest.mark.parametrize("true_k", [2, 4, 5])
def test_the_chosen_k_is_the_true_number_of_clusters(true_k):
    centres = [(0, 0), (20, 20), (0, 20), (20, 0), (40, 40)][:true_k]
    x, y, truth = _blobs(centres)
    result, _, _ = cluster([Column("x", True, x), Column("y", True, y)])
    assert result.k == true_k
    assert result.silhouette == max(result.silhouette_by_k.values())
    # every found cluster is exactly one true group
    for number in range(true_k):
        members = {t for t, label in zip(truth, result.labels, strict=True) if label == number}
        assert len(members) == 1


def test_profiles_name_the_distinguishing_features_in_original_units():
    rng = np.random.default_rng(5)
    n = 80
    income = list(rng.normal(3000, 200, n)) + list(rng.normal(30000, 2000, n))
    noise = list(rng.normal(50, 10, 2 * n))  # the same in both groups: never the top trait
    city = ["rural"] * n + ["shanghai"] * n
    result, _, _ = cluster([Column("income", True, income), Column("noise", True, noise),
                            Column("city", False, city)], k=2)
    rich = max(result.clusters, key=lambda c: c.centre[0].mean)
    poor = min(result.clusters, key=lambda c: c.centre[0].mean)
    assert abs(rich.centre[0].mean - 30000) < 1000 and abs(poor.centre[0].mean - 3000) < 200
    assert (rich.centre[2].top_value, rich.centre[2].top_share) == ("shanghai", 1.0)
    assert {t.field for t in rich.traits[:2]} == {"income", "city"}
    assert rich.traits[2].field == "noise"
    income_trait = next(t for t in rich.traits if t.field == "income")
    assert income_trait.z_score == pytest.approx(1.0, abs=0.05)  # half above, half below: +-1 sd
    assert "above average" in income_trait.description
    city_trait = next(t for t in rich.traits if t.field == "city")
    assert (city_trait.cluster_share, city_trait.overall_share) == (1.0, 0.5)
    assert (rich.size, rich.share, rich.number in (1, 2)) == (n, 0.5, True)


def test_missing_values_and_assignment_of_new_rows():
    x, y, _ = _blobs([(0, 0), (30, 30)], per=30)
    x[0] = None  # mean-imputed
    cat = ["a"] * 30 + [None] * 30  # missing is a category of its own
    columns = [Column("x", True, x), Column("y", True, y), Column("c", False, cat)]
    result, encoder, model = cluster(columns, k=2)
    assert sorted(c.size for c in result.clusters) == [30, 30]
    tops = {c.centre[2].top_value for c in result.clusters}
    assert tops == {"a", MISSING}
    new = [Column("x", True, [0.5, 29.0]), Column("y", True, [0.2, 31.0]), Column("c", False, ["a", None])]
    labels = assign(encoder, model, new)
    assert labels[0] == result.labels[1] and labels[1] == result.labels[-1] and labels[0] != labels[1]


def test_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="more clusters"):
        cluster([Column("x", True, [1.0, 2.0])], k=2)
