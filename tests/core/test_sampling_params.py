"""SamplingParams: parsing (types, unknown keys), SGLang's range checks, normalize and round trips."""

import json
import math

import pytest

from sglkit.core.sampling_params import SamplingParamError, SamplingParams

VOCAB = 1000


def test_defaults_match_sglang():
    p = SamplingParams()
    assert p.max_new_tokens == 128
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, -1, 0.0)
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.min_new_tokens, p.n, p.ignore_eos, p.no_stop_trim) == (0, 1, False, False)
    assert p.skip_special_tokens and p.spaces_between_special_tokens
    assert p.stop is None and p.stop_token_ids is None and p.logit_bias is None
    assert p.sampling_seed is None and p.stream_interval is None
    p.verify(VOCAB)


def test_from_dict_none_and_none_values_mean_default():
    assert SamplingParams.from_dict(None) == SamplingParams()
    p = SamplingParams.from_dict({"temperature": None, "max_new_tokens": None, "top_k": 5})
    assert p.temperature == 1.0 and p.max_new_tokens == 128 and p.top_k == 5


def test_unknown_key_names_the_key():
    with pytest.raises(SamplingParamError) as err:
        SamplingParams.from_dict({"temprature": 0.5})
    assert err.value.param == "temprature"
    assert str(err.value).startswith("temprature")


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_new_tokens", True),  # bools are not ints
        ("max_new_tokens", "16"),  # strings are not numbers
        ("max_new_tokens", 16.5),  # fractions are not ints
        ("top_k", float("nan")),
        ("temperature", False),
        ("temperature", "0.5"),
        ("top_p", [0.5]),
        ("ignore_eos", 1),  # bool fields take only booleans
        ("stop", 5),
        ("stop", ["a", 3]),
        ("stop_token_ids", "12"),
        ("stop_token_ids", [1, True]),
        ("logit_bias", [1, 2]),
        ("logit_bias", {"abc": 1.0}),
        ("logit_bias", {"5": "high"}),
        ("sampling_seed", "42"),
        ("sampling_seed", 4.2),
        ("n", "2"),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(key, value):
    with pytest.raises(SamplingParamError) as err:
        SamplingParams.from_dict({key: value})
    assert err.value.param == key
    assert str(err.value).startswith(key)


def test_numeric_coercions():
    p = SamplingParams.from_dict(
        {"max_new_tokens": 16.0, "top_k": 20, "temperature": 1, "logit_bias": {"7": 2, 9: -1.5}}
    )
    assert p.max_new_tokens == 16 and type(p.max_new_tokens) is int
    assert p.temperature == 1.0 and type(p.temperature) is float
    assert p.logit_bias == {7: 2.0, 9: -1.5}
    assert SamplingParams.from_dict({"stop_token_ids": (3, 4.0)}).stop_token_ids == [3, 4]


def test_non_dict_is_rejected():
    with pytest.raises(SamplingParamError) as err:
        SamplingParams.from_dict([("temperature", 1.0)])
    assert err.value.param == "sampling_params"


def test_error_message_format():
    with pytest.raises(SamplingParamError) as err:
        SamplingParams(temperature=-1.0).verify(VOCAB)
    assert err.value.param == "temperature"
    assert str(err.value) == "temperature must be a finite number >= 0, got -1.0"
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "field,value,ok",
    [
        ("temperature", 0.0, True),
        ("temperature", 100.0, True),
        ("temperature", -0.1, False),
        ("temperature", math.inf, False),
        ("temperature", math.nan, False),
        ("top_p", 1.0, True),
        ("top_p", 1e-3, True),
        ("top_p", 0.0, False),
        ("top_p", 1.01, False),
        ("top_p", math.nan, False),
        ("top_k", -1, True),
        ("top_k", 1, True),
        ("top_k", VOCAB * 10, True),  # clamped to the vocabulary by the sampler
        ("top_k", 0, False),
        ("top_k", -2, False),
        ("min_p", 0.0, True),
        ("min_p", 1.0, True),
        ("min_p", -0.01, False),
        ("min_p", 1.5, False),
        ("frequency_penalty", -2.0, True),
        ("frequency_penalty", 2.0, True),
        ("frequency_penalty", 2.5, False),
        ("presence_penalty", -2.01, False),
        ("presence_penalty", math.inf, False),
        ("repetition_penalty", 2.0, True),
        ("repetition_penalty", 0.5, True),
        ("repetition_penalty", 0.0, False),
        ("repetition_penalty", 2.5, False),
        ("max_new_tokens", 0, True),
        ("max_new_tokens", -1, False),
        ("min_new_tokens", -1, False),
        ("min_new_tokens", 129, False),  # above max_new_tokens=128
        ("min_new_tokens", 128, True),
        ("n", 1, True),
        ("n", 128, True),
        ("n", 0, False),
        ("n", 129, False),
        ("stop_token_ids", [0, VOCAB - 1], True),
        ("stop_token_ids", [VOCAB], False),
        ("stop_token_ids", [-1], False),
        ("logit_bias", {0: 1.0, VOCAB - 1: -100.0}, True),
        ("logit_bias", {"5": 1.0}, True),
        ("logit_bias", {VOCAB: 1.0}, False),
        ("logit_bias", {-1: 1.0}, False),
        ("logit_bias", {5: math.inf}, False),
        ("logit_bias", {5: math.nan}, False),
        ("stop", "abc", True),
        ("stop", ["a"] * 32, True),
        ("stop", ["a"] * 33, False),
        ("stop", [""], False),
        ("stop", "", False),
        ("sampling_seed", 0, True),
        ("sampling_seed", 2**64 - 1, True),
        ("sampling_seed", 2**64, False),
        ("sampling_seed", "7", False),
        ("stream_interval", 1, True),
        ("stream_interval", 0, False),
    ],
)
def test_verify_ranges(field, value, ok):
    p = SamplingParams(**{field: value})
    if ok:
        p.verify(VOCAB)
    else:
        with pytest.raises(SamplingParamError) as err:
            p.verify(VOCAB)
        assert err.value.param == field
        assert str(err.value).startswith(field)


def test_verify_checks_types_of_directly_built_params():
    with pytest.raises(SamplingParamError) as err:
        SamplingParams(top_k=True).verify(VOCAB)
    assert err.value.param == "top_k"
    with pytest.raises(SamplingParamError) as err:
        SamplingParams(temperature=None).verify(VOCAB)
    assert err.value.param == "temperature"


def test_duplicate_logit_bias_ids_rejected():
    with pytest.raises(SamplingParamError) as err:
        SamplingParams.from_dict({"logit_bias": {"5": 1.0, 5: 2.0}})
    assert err.value.param == "logit_bias"


def test_normalize_and_is_greedy():
    p = SamplingParams(stop="END", logit_bias={"3": 1}, temperature=0.0)
    p.verify(VOCAB)
    p.normalize()
    assert p.stop == ["END"] and p.logit_bias == {3: 1.0}
    assert p.is_greedy
    p.normalize()  # idempotent
    assert p.stop == ["END"]
    assert SamplingParams(top_k=1).is_greedy
    assert SamplingParams(temperature=1e-7).is_greedy
    assert not SamplingParams(temperature=0.1).is_greedy
    q = SamplingParams()
    q.normalize()
    assert q.stop == [] and q.stop_strs == [] and q.max_stop_str_len == 0
    assert SamplingParams(stop=["ab", "abcd"]).max_stop_str_len == 4


def test_to_dict_round_trip():
    p = SamplingParams.from_dict(
        {
            "max_new_tokens": 7,
            "stop": ["x", "yz"],
            "stop_token_ids": [1, 2],
            "temperature": 0.3,
            "logit_bias": {"11": -2.5},
            "sampling_seed": 123,
            "no_stop_trim": True,
        }
    )
    d = p.to_dict()
    assert d["logit_bias"] == {"11": -2.5}  # JSON-safe keys
    assert SamplingParams.from_dict(d) == p
    assert json.loads(json.dumps(d)) == d
