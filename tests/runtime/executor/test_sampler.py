"""Sampler: greedy/top-k/top-p/min-p sets and frequencies, penalties by hand, bias, min_new_tokens, seeds, logprobs."""

import math
from dataclasses import replace

import pytest
import torch

from sglkit.core.req import Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.executor.sampler import (
    Sampler,
    SamplingBatchInfo,
    apply_logit_processors,
    compute_logprobs,
    filter_probs,
    get_token_logprobs,
    get_top_logprobs,
)

NUM_DRAWS = 2000
# A crafted distribution, deliberately not in sorted vocabulary order: token 3 is the most likely.
PROBS = torch.tensor([0.05, 0.15, 0.10, 0.50, 0.20])
LOGITS = PROBS.log()


def build(params, prompt_ids=None, output_ids=None, vocab_size=None, eos=(), device="cpu"):
    """SamplingBatchInfo with empty histories unless given."""
    n = len(params)
    return SamplingBatchInfo.from_params(
        params,
        prompt_ids if prompt_ids is not None else [[] for _ in range(n)],
        output_ids if output_ids is not None else [[] for _ in range(n)],
        vocab_size if vocab_size is not None else LOGITS.shape[0],
        set(eos),
        device,
    )


def draw_many(params: SamplingParams, logits_row=LOGITS, n=NUM_DRAWS, seed=0) -> torch.Tensor:
    """n independent draws for one row's params (as an n-row batch), with a seeded default generator."""
    logits = logits_row.unsqueeze(0).repeat(n, 1)
    info = build([params] * n, vocab_size=logits.shape[1])
    return Sampler().sample(logits, info, torch.Generator().manual_seed(seed))


def frequencies(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(ids, minlength=vocab).float() / ids.numel()


def renormalized(allowed: list[int], probs=PROBS) -> torch.Tensor:
    out = torch.zeros_like(probs)
    out[allowed] = probs[allowed] / probs[allowed].sum()
    return out


def assert_matches(ids: torch.Tensor, expected: torch.Tensor, tol: float = 0.04):
    """Only allowed tokens, each allowed one emitted, frequencies within a loose bound (~4 sigma at n=2000)."""
    allowed = set(expected.nonzero().squeeze(1).tolist())
    emitted = set(ids.tolist())
    assert emitted <= allowed, f"emitted {emitted - allowed} outside {allowed}"
    assert emitted == allowed
    assert torch.allclose(frequencies(ids, expected.numel()), expected, atol=tol)


def test_plain_sampling_matches_softmax():
    assert_matches(draw_many(SamplingParams()), PROBS)


def test_temperature_scales_the_distribution():
    expected = torch.softmax(LOGITS / 0.5, dim=-1)
    assert_matches(draw_many(SamplingParams(temperature=0.5)), expected)
    hot = torch.softmax(LOGITS / 2.0, dim=-1)
    assert_matches(draw_many(SamplingParams(temperature=2.0), seed=1), hot)


def test_top_k_set_and_frequencies():
    assert_matches(draw_many(SamplingParams(top_k=2)), renormalized([3, 4]))
    assert_matches(draw_many(SamplingParams(top_k=3)), renormalized([3, 4, 1]))


def test_top_k_larger_than_vocab_is_clamped():
    assert_matches(draw_many(SamplingParams(top_k=10_000)), PROBS)


def test_top_p_set_and_frequencies():
    # Sorted: 0.5, 0.2, 0.15, 0.1, 0.05. Mass before 0.15 is 0.7 < 0.75, before 0.1 is 0.85.
    assert_matches(draw_many(SamplingParams(top_p=0.75)), renormalized([3, 4, 1]))
    assert_matches(draw_many(SamplingParams(top_p=0.3)), renormalized([3]))
    assert_matches(draw_many(SamplingParams(top_p=0.9)), renormalized([3, 4, 1, 2]))


def test_top_p_applies_to_the_top_k_renormalized_distribution():
    # Top 3 renormalized: 0.588, 0.235, 0.176 -> mass before the third is 0.82 >= 0.8, so it is cut.
    assert_matches(draw_many(SamplingParams(top_k=3, top_p=0.8)), renormalized([3, 4]))


def test_min_p_set_and_frequencies():
    # Threshold 0.25 * 0.5 = 0.125 keeps 0.5, 0.2, 0.15.
    assert_matches(draw_many(SamplingParams(min_p=0.25)), renormalized([3, 4, 1]))
    assert_matches(draw_many(SamplingParams(min_p=1.0)), renormalized([3]))


def test_top_p_on_a_large_flat_vocabulary():
    # Needs more than the first top-k guess: the filter must grow k until the mass is reached.
    torch.manual_seed(0)
    vocab = 4000
    logits = torch.randn(vocab) * 0.1
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    mass_before = sorted_probs.cumsum(0) - sorted_probs
    allowed = set(order[mass_before < 0.9].tolist())
    kept = filter_probs(probs.unsqueeze(0), torch.tensor([vocab]), torch.tensor([0.9]), torch.tensor([0.0]))
    assert set(kept[0].nonzero().squeeze(1).tolist()) == allowed
    ids = draw_many(SamplingParams(top_p=0.9), logits_row=logits, n=500)
    assert set(ids.tolist()) <= allowed


def test_top_k_one_equals_greedy():
    torch.manual_seed(1)
    logits = torch.randn(16, 100)
    params = [SamplingParams(top_k=1, temperature=0.8, sampling_seed=3)] * 16
    ids = Sampler().sample(logits, build(params, vocab_size=100), torch.Generator().manual_seed(0))
    assert torch.equal(ids, logits.argmax(dim=-1))
    # The filter itself keeps only the argmax when k == 1, whatever the temperature.
    kept = filter_probs(
        torch.softmax(logits, -1), torch.ones(16, dtype=torch.long), torch.ones(16), torch.zeros(16)
    )
    assert torch.equal((kept > 0).sum(-1), torch.ones(16, dtype=torch.long))
    assert torch.equal(kept.argmax(-1), logits.argmax(-1))


def test_greedy_is_independent_of_other_rows():
    torch.manual_seed(2)
    logits = torch.randn(4, 50)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=5.0),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.3, top_p=0.5),
    ]
    for seed in range(5):
        ids = Sampler().sample(logits, build(params, vocab_size=50), torch.Generator().manual_seed(seed))
        assert ids[0] == logits[0].argmax() and ids[2] == logits[2].argmax()
    all_greedy = build([SamplingParams(temperature=0.0)] * 4, vocab_size=50)
    assert torch.equal(Sampler().sample(logits, all_greedy), logits.argmax(-1))


def test_sample_does_not_modify_logits():
    torch.manual_seed(3)
    logits = torch.randn(3, 20)
    before = logits.clone()
    params = [SamplingParams(repetition_penalty=1.5, logit_bias={1: 3.0}, min_new_tokens=2, top_p=0.5)] * 3
    info = build(params, prompt_ids=[[1, 2]] * 3, output_ids=[[3]] * 3, vocab_size=20, eos=[0])
    Sampler().sample(logits, info, torch.Generator().manual_seed(0))
    assert torch.equal(logits, before)


def test_penalties_match_hand_computation():
    logits = torch.tensor([[1.0, -2.0, 3.0, -0.5, 0.0, 2.0]])
    params = [SamplingParams(repetition_penalty=1.5, frequency_penalty=0.5, presence_penalty=0.3)]
    prompt, output = [1, 5], [2, 3, 3, 2, 2]
    got = apply_logit_processors(logits, build(params, [prompt], [output], vocab_size=6))
    expected = logits[0].tolist()
    for t in set(prompt + output):  # repetition: divide positive logits, multiply negative ones
        expected[t] = expected[t] / 1.5 if expected[t] > 0 else expected[t] * 1.5
    for t in set(output):  # OpenAI: count * frequency + presence
        expected[t] -= output.count(t) * 0.5 + 0.3
    assert torch.allclose(got[0], torch.tensor(expected))
    # Token 0 and 4 were never seen: untouched.
    assert got[0, 0] == 1.0 and got[0, 4] == 0.0


def test_each_penalty_alone_and_per_row():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]] * 3)
    params = [
        SamplingParams(frequency_penalty=1.0),
        SamplingParams(presence_penalty=-0.5),
        SamplingParams(repetition_penalty=0.5),
    ]
    out = [[0, 0, 1]] * 3
    prompt = [[3]] * 3
    got = apply_logit_processors(logits, build(params, prompt, out, vocab_size=4))
    assert torch.allclose(got[0], torch.tensor([0.0, -2.0, 0.5, 1.0]))
    assert torch.allclose(got[1], torch.tensor([2.5, -0.5, 0.5, 1.0]))
    assert torch.allclose(got[2], torch.tensor([4.0, -0.5, 0.5, 2.0]))


def test_penalties_change_greedy_choice():
    logits = torch.tensor([[5.0, 4.0, 1.0]])
    info = build([SamplingParams(temperature=0.0, frequency_penalty=2.0)], output_ids=[[0]], vocab_size=3)
    assert Sampler().sample(logits, info).item() == 1


def test_logit_bias():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    info = build([SamplingParams(logit_bias={"0": 10.0, 3: -1.5})], vocab_size=4)
    got = apply_logit_processors(logits, info)
    assert torch.allclose(got, torch.tensor([[10.0, 1.0, 2.0, 1.5]]))
    ids = draw_many(SamplingParams(logit_bias={1: 100.0}), logits_row=logits[0], n=200)
    assert set(ids.tolist()) == {1}
    ids = draw_many(SamplingParams(logit_bias={3: -100.0, 2: -100.0}), logits_row=logits[0], n=500)
    assert set(ids.tolist()) == {0, 1}


def test_min_new_tokens_masks_eos_and_stop_token_ids():
    logits = torch.tensor([[9.0, 8.0, 1.0, 7.0]])  # EOS=0 is the argmax, stop token 1 next
    params = [SamplingParams(temperature=0.0, min_new_tokens=3, stop_token_ids=[1])]
    sampler = Sampler()
    assert sampler.sample(logits, build(params, output_ids=[[2, 2]], vocab_size=4, eos=[0])).item() == 3
    got = apply_logit_processors(logits, build(params, output_ids=[[]], vocab_size=4, eos=[0]))
    assert got[0, 0] == -math.inf and got[0, 1] == -math.inf and got[0, 3] == 7.0
    # Once min_new_tokens outputs exist, EOS is allowed again.
    assert sampler.sample(logits, build(params, output_ids=[[2, 2, 2]], vocab_size=4, eos=[0])).item() == 0
    # Sampled rows never draw a banned id either.
    ids = draw_many(SamplingParams(min_new_tokens=1), logits_row=torch.zeros(4), n=400)
    info_ids = set(ids.tolist())
    assert info_ids == {0, 1, 2, 3}  # no EOS configured in draw_many
    logits = torch.zeros(400, 4)
    info = build([SamplingParams(min_new_tokens=1)] * 400, vocab_size=4, eos=[0, 2])
    assert set(Sampler().sample(logits, info, torch.Generator().manual_seed(0)).tolist()) == {1, 3}


def test_same_seed_same_tokens_alone_or_in_a_batch():
    torch.manual_seed(4)
    vocab = 64
    steps = [torch.randn(7, vocab) for _ in range(20)]
    seeded = SamplingParams(temperature=0.9, top_p=0.95, sampling_seed=1234)
    others = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=0.7, min_p=0.1),
        SamplingParams(temperature=1.0),
    ]

    def run(batch_params, row, default_seed):
        default = torch.Generator().manual_seed(default_seed)
        out = []
        for logits in steps:
            batch_logits = logits[1 : 1 + len(batch_params)].clone()
            batch_logits[row] = logits[0]  # the seeded request's row, wherever it sits
            histories = [[0] * len(out)] * len(batch_params)  # the draw's counter: tokens generated so far
            info = build(batch_params, output_ids=histories, vocab_size=vocab)
            out.append(Sampler().sample(batch_logits, info, default)[row].item())
        return out

    alone = run([seeded], 0, default_seed=0)
    batch = others[:1] + [replace(seeded, sampling_seed=99)] + [seeded] + others[1:]
    in_batch = run(batch, 2, default_seed=7)
    assert alone == in_batch
    assert len(set(alone)) > 1  # it really sampled
    other_seed = run([replace(seeded, sampling_seed=1)], 0, default_seed=0)
    assert other_seed != alone


def test_from_reqs_reads_request_state():
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    req = Req(rid="a", origin_input_ids=[0], sampling_params=params, output_ids=[])
    info = SamplingBatchInfo.from_reqs([req], vocab_size=3, eos_token_ids={2}, device="cpu")
    logits = torch.tensor([[3.0, 2.0, 0.0]])
    assert Sampler().sample(logits, info).item() == 1  # 3.0 / 2 < 2.0


def test_logprobs_helpers():
    torch.manual_seed(5)
    logits = torch.randn(3, 10)
    logprobs = compute_logprobs(logits)
    assert logprobs.dtype == torch.float32
    assert torch.allclose(logprobs, torch.log_softmax(logits.double(), -1).float(), atol=1e-6)
    ids = torch.tensor([0, 5, 9])
    assert torch.allclose(get_token_logprobs(logprobs, ids), logprobs[torch.arange(3), ids])
    values, top_ids = get_top_logprobs(logprobs, 4)
    assert values.shape == (3, 4) and top_ids.shape == (3, 4)
    assert torch.equal(top_ids[:, 0], logits.argmax(-1))
    assert torch.all(values[:, :-1] >= values[:, 1:])
    values, top_ids = get_top_logprobs(logprobs, 50)  # clamped to the vocabulary
    assert values.shape == (3, 10)
    assert get_top_logprobs(logprobs, 0)[0].shape == (3, 0)


def test_build_for_a_large_batch():
    vocab = 32000
    params = [SamplingParams(repetition_penalty=1.1, frequency_penalty=0.2, logit_bias={5: 1.0})] * 64
    info = build(params, [list(range(500))] * 64, [list(range(100))] * 64, vocab_size=vocab, eos=[2])
    assert info.penalty_rows.numel() == 64 and info.penalty_batch_rows is None  # every row penalized
    assert (
        int(info.penalty_counts.counts.sum()) == 64 * 100 and int(info.penalty_counts.seen.sum()) == 64 * 500
    )
    assert info.bias_index.numel() == 64
    ids = Sampler().sample(torch.randn(64, vocab), info, torch.Generator().manual_seed(0))
    assert ids.shape == (64,) and ids.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_seeded_rows_match_alone_and_batched():
    device = "cuda"
    logits = torch.randn(3, 1000, device=device)
    p = SamplingParams(temperature=0.8, top_k=50, sampling_seed=5)
    alone = Sampler().sample(logits[1:2], build([p], vocab_size=1000, device=device))
    batch = Sampler().sample(
        logits,
        build([SamplingParams()] * 1 + [p] + [SamplingParams(top_p=0.5)], vocab_size=1000, device=device),
        torch.Generator(device=device).manual_seed(0),
    )
    assert alone.item() == batch[1].item()
