"""conditions.py's dtype rule, and the fit's check of the image count against the position's dimension."""
import types

import numpy as np
import pytest

import conditions
from features import FeatureSpace


def test_a_float64_condition_is_refused_in_one_line_naming_it_and_the_fix():
    with pytest.raises(ValueError, match=r"condition 'brightness' is float64: give float32 \(value.astype"):
        conditions.condition_sizes({"label": np.array([0, 1]), "brightness": np.zeros((2, 1), np.float64)})
    assert conditions.condition_sizes({"brightness": np.zeros((2, 1), np.float32)}) == {"brightness": 1}


def test_image_conditions_gives_float_conditions_in_float32_whatever_the_space_returns():
    space = types.SimpleNamespace(n_components=2, positions=np.arange(6, dtype=np.float64).reshape(3, 2),
                                  standardize=lambda u: np.asarray(u, np.float64) * 2.0)  # a fork's float64 maths
    cond = conditions.image_conditions(["label", "pos"], np.zeros((2, 4, 4, 1), np.uint8), np.array([1, 0]), space,
                                       {}, train_index=np.array([2, 0]))
    assert cond["pos"].dtype == np.float32 and cond["label"].dtype == np.int64
    np.testing.assert_array_equal(cond["pos"], [[8.0, 10.0], [0.0, 2.0]])  # 2 * positions[[2, 0]]
    assert conditions.condition_sizes(cond) == {"label": 2, "pos": 2}


def test_too_few_images_for_the_positions_dimension_is_one_line_before_umap():
    features = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)  # 20 > n_neighbors 15, <= 20 + 1
    with pytest.raises(ValueError, match=r"--pos-dim 20\), got 20: add images or pass a smaller --pos-dim"):
        FeatureSpace.fit(features, n_components=20)
