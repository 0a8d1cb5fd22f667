"""Pooling config (sglkit/models/pooling_config.py): what a sentence-transformers folder asks for, or a refusal."""

from __future__ import annotations

import json

import pytest

from sglkit.layers.pooler import PoolingConfig, PoolingType
from sglkit.models.pooling_config import read_max_seq_length, read_pooling_config

TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def write(folder, modules, **flags):
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **flags}))


def test_a_folder_without_modules_json_keeps_the_model_default(tmp_path):
    assert read_pooling_config(tmp_path) is None


@pytest.mark.parametrize(
    ("flag", "kind"),
    [
        ("pooling_mode_mean_tokens", PoolingType.MEAN),
        ("pooling_mode_cls_token", PoolingType.CLS),
        ("pooling_mode_max_tokens", PoolingType.MAX),
        ("pooling_mode_mean_sqrt_len_tokens", PoolingType.MEAN_SQRT_LEN),
        ("pooling_mode_lasttoken", PoolingType.LAST),
    ],
)
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_mode_and_normalize_are_read(tmp_path, flag, kind, normalize):
    write(
        tmp_path, [TRANSFORMER, POOLING] + ([NORMALIZE] if normalize else []), **{flag: True, "other": False}
    )
    assert read_pooling_config(tmp_path) == PoolingConfig(kind, normalize)


def test_the_installed_minilm_layout_is_mean_normalized_with_256_tokens():
    from tests.embedding_reference import minilm_path

    path = minilm_path(need_sentence_transformers=False)
    assert read_pooling_config(path) == PoolingConfig(PoolingType.MEAN, True)
    assert read_max_seq_length(path) == 256


def test_max_seq_length_absent_or_invalid_is_none(tmp_path):
    assert read_max_seq_length(tmp_path) is None
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert read_max_seq_length(tmp_path) is None


@pytest.mark.parametrize(
    ("modules", "flags", "message"),
    [
        (
            [TRANSFORMER, POOLING, {"type": "sentence_transformers.models.Dense", "path": "2_Dense"}],
            {"pooling_mode_mean_tokens": True},
            "Dense",
        ),
        (
            [TRANSFORMER, POOLING],
            {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},
            "exactly one",
        ),
        ([TRANSFORMER, POOLING], {}, "exactly one"),
        ([TRANSFORMER, POOLING], {"pooling_mode_weightedmean_tokens": True}, "weightedmean"),
        ([TRANSFORMER], {}, "no Pooling module"),
        (
            [{**TRANSFORMER, "path": "0_Transformer"}, POOLING],
            {"pooling_mode_mean_tokens": True},
            "0_Transformer",
        ),
    ],
)
def test_unsupported_layouts_are_refused_by_name(tmp_path, modules, flags, message):
    write(tmp_path, modules, **flags)
    with pytest.raises(ValueError, match=message):
        read_pooling_config(tmp_path)
