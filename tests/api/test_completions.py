"""POST /v1/completions through the official openai client (and httpx for the raw stream)."""

import json

import pytest

from .conftest import MODEL, sse_data

PROMPT = "The capital of France is"


def tokenize(http, text: str) -> list[int]:
    return http.post("/tokenize", json={"prompt": text}).json()["tokens"]


def greedy(client, prompt=PROMPT, max_tokens=6, **extra):
    return client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **extra
    )


def test_response_shape_and_usage(client, http):
    r = greedy(client)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.model == MODEL and isinstance(r.created, int) and r.system_fingerprint.startswith("fp_")
    (choice,) = r.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.text and choice.logprobs is None
    assert r.usage.prompt_tokens == len(tokenize(http, PROMPT))
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6
    raw = http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 2}).json()
    assert set(raw) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert set(raw["choices"][0]) == {"index", "text", "logprobs", "finish_reason"}


def test_greedy_is_deterministic(client):
    assert greedy(client).choices[0].text == greedy(client).choices[0].text


def test_stream_equals_non_stream_at_temperature_0(client):
    whole = greedy(client, max_tokens=8)
    chunks = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])


def test_stream_include_usage_and_done(http):
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = sse_data(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert usage["usage"]["prompt_tokens"] == len(tokenize(http, PROMPT))
    assert all("usage" not in c for c in chunks[:-1])
    assert all(c["object"] == "text_completion" for c in chunks)


def test_token_id_prompts_equal_text_prompts(client, http):
    ids = tokenize(http, PROMPT)
    assert greedy(client, prompt=ids).choices[0].text == greedy(client).choices[0].text


def test_several_prompts_and_n_index_order(client, http):
    other = "Once upon a time"
    single = {p: greedy(client, prompt=p, max_tokens=3).choices[0].text for p in (PROMPT, other)}
    r = greedy(client, prompt=[PROMPT, other], max_tokens=3, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [single[PROMPT]] * 2 + [single[other]] * 2
    assert r.usage.prompt_tokens == len(tokenize(http, PROMPT)) + len(tokenize(http, other))
    assert r.usage.completion_tokens == 12
    ids = [tokenize(http, PROMPT), tokenize(http, other)]
    assert [c.text for c in greedy(client, prompt=ids, max_tokens=3).choices] == [
        single[PROMPT],
        single[other],
    ]


def test_stream_several_prompts_and_n(client):
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=[PROMPT, "Hi"], max_tokens=3, temperature=0, n=2, stream=True
        )
    )
    texts, finishes = {}, {}
    for c in chunks:
        (choice,) = c.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
        if choice.finish_reason:
            assert choice.index not in finishes
            finishes[choice.index] = choice.finish_reason
    whole = greedy(client, prompt=[PROMPT, "Hi"], max_tokens=3, n=2)
    assert texts == {c.index: c.text for c in whole.choices}
    assert finishes == {0: "length", 1: "length", 2: "length", 3: "length"}


def test_echo(client):
    r = greedy(client, echo=True, max_tokens=3)
    assert r.choices[0].text == PROMPT + greedy(client, max_tokens=3).choices[0].text


def test_logprobs_shape(client):
    r = greedy(client, logprobs=3, max_tokens=5)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and 3 <= len(top) <= 4
        assert top[token] == pytest.approx(logprob)
        assert max(top.values()) == pytest.approx(logprob)  # greedy picks the most likely token


def test_echo_with_logprobs_scores_the_prompt(client, http):
    r = greedy(client, echo=True, logprobs=1, max_tokens=2)
    lp = r.choices[0].logprobs
    n_prompt = len(tokenize(http, PROMPT))
    assert len(lp.tokens) == n_prompt + 2
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])


def test_stop_string(client):
    text = greedy(client, max_tokens=8).choices[0].text
    stop = text.strip().split()[1] if len(text.split()) > 1 else text[2:4]
    r = greedy(client, max_tokens=8, stop=[stop, "zzzz"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(stop)]
    assert r.usage.completion_tokens < 8


def test_seed_reproducible_at_temperature_1_and_other_seeds_differ(client):
    def sampled(seed: int) -> str:
        r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=seed)
        return r.choices[0].text

    assert sampled(1234) == sampled(1234)
    texts = {sampled(seed) for seed in (1, 2, 3, 4)}
    assert len(texts) > 1, f"four seeds, one text {texts}: the seed or the temperature is ignored"


def test_temperature_0_takes_the_most_likely_token_each_step(client):
    r = greedy(
        client, prompt="My favourite animal is", max_tokens=16, logprobs=5, extra_body={"ignore_eos": True}
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 16
    for token, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen == pytest.approx(max(top.values())), (token, top)


def test_stop_token_ids_end_the_completion(client, http):
    text = greedy(client, max_tokens=8).choices[0].text
    ids = http.post("/tokenize", json={"prompt": PROMPT + text}).json()["tokens"]
    stop_id = ids[len(tokenize(http, PROMPT)) + 2]  # the third generated token
    r = greedy(client, max_tokens=8, extra_body={"stop_token_ids": [stop_id]})
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 3
    assert text.startswith(r.choices[0].text) and len(r.choices[0].text) < len(text)


@pytest.mark.parametrize("extra", [{"top_k": 1}, {"top_p": 0.001}, {"min_p": 1.0}])
def test_truncating_samplers_at_temperature_1_equal_greedy(client, extra):
    r = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=5,
        temperature=1.0,
        seed=5,
        extra_body={k: v for k, v in extra.items() if k != "top_p"},
        **({"top_p": extra["top_p"]} if "top_p" in extra else {}),
    )
    assert r.choices[0].text == greedy(client, max_tokens=5).choices[0].text


def test_logit_bias_forces_a_token(client, http):
    (token,) = tokenize(http, " Paris")
    r = greedy(client, max_tokens=3, logit_bias={str(token): 100})
    assert r.choices[0].text == " Paris" * 3


def test_penalties_change_repetitive_output(client):
    prompt = "the the the the the the the the"
    plain = greedy(client, prompt=prompt, max_tokens=8).choices[0].text
    for extra in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert greedy(client, prompt=prompt, max_tokens=8, **extra).choices[0].text != plain, extra
    penalised = greedy(client, prompt=prompt, max_tokens=8, extra_body={"repetition_penalty": 2.0})
    assert penalised.choices[0].text != plain
    ones = "1, 1, 1, 1, 1, 1, 1, 1, 1,"
    counted = greedy(client, prompt=ones, max_tokens=8, frequency_penalty=2.0).choices[0].text
    assert counted.count(" 1") < greedy(client, prompt=ones, max_tokens=8).choices[0].text.count(" 1")


def test_ignore_eos_and_user(client):
    # SmolLM2-135M-Instruct ends this bare question at once (greedy): only ignore_eos makes it go on
    question = "What is the capital of France?"
    bare = greedy(client, prompt=question, max_tokens=8)
    assert bare.choices[0].finish_reason == "stop" and bare.usage.completion_tokens <= 1
    r = greedy(client, prompt=question, max_tokens=8, user="user-1", extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8


def test_stream_with_echo_and_logprobs_equals_non_stream(client):
    whole = greedy(client, echo=True, logprobs=2, max_tokens=4).choices[0]
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for lp in streamed for t in lp.tokens] == whole.logprobs.tokens
    assert [v for lp in streamed for v in lp.token_logprobs] == whole.logprobs.token_logprobs
    assert [o for lp in streamed for o in lp.text_offset] == whole.logprobs.text_offset
