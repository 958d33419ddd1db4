"""GET /v1/models, /tokenize and /detokenize (vLLM's shapes), /health, /metrics, the OpenAPI schema."""

from .conftest import MODEL


def test_models(client, http):
    (card,) = client.models.list().data
    assert (card.id, card.object, card.owned_by) == (MODEL, "model", "gguf-serve")
    assert client.models.retrieve(MODEL).id == MODEL
    raw = http.get("/v1/models").json()
    assert raw["object"] == "list" and raw["data"][0]["max_model_len"] == 8192


def test_tokenize_and_detokenize_round_trip(http):
    r = http.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert r == {"count": 2, "max_model_len": 8192, "tokens": [19556, 905], "token_strs": ["Hello", " world"]}
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "Hello world"}


def test_tokenize_messages_uses_the_chat_template(http):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    r = http.post("/tokenize", json={"messages": messages, "model": MODEL}).json()
    text = http.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"]
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert r["count"] == len(r["tokens"]) and r["token_strs"] is None
    bare = http.post("/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert r["tokens"][: bare["count"]] == bare["tokens"] and bare["count"] < r["count"]


def test_health_ready(http):
    r = http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_metrics_exposition(http):
    http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
    r = http.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for name in (
        "requests_running",
        "requests_waiting",
        "kv_cache_usage_ratio",
        "prompt_tokens_total",
        "generation_tokens_total",
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
    ):
        assert f"# TYPE gguf_serve_{name} " in text, name
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples["gguf_serve_generation_tokens_total"]) >= 2
    assert float(samples["gguf_serve_e2e_request_latency_seconds_count"]) >= 1
    assert (
        samples['gguf_serve_time_to_first_token_seconds_bucket{le="+Inf"}']
        == samples["gguf_serve_time_to_first_token_seconds_count"]
    )
    assert float(samples["gguf_serve_worker_up"]) == 1


def test_openapi_schema_lists_routes_and_request_bodies(http):
    schema = http.get("/schema/openapi.json").json()
    paths = schema["paths"]
    expected = {
        ("/v1/completions", "post"): "CompletionRequest",
        ("/v1/chat/completions", "post"): "ChatCompletionRequest",
        ("/tokenize", "post"): "TokenizeRequest",
        ("/detokenize", "post"): "DetokenizeRequest",
    }
    for (path, method), model in expected.items():
        body = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(model), (path, body)
    for path in ("/v1/models", "/v1/models/{model_id}", "/health", "/metrics"):
        assert "get" in paths[path], path
    components = schema["components"]["schemas"]
    chat = components[next(k for k in components if k.endswith("ChatCompletionRequest"))]
    assert {"model", "messages"} <= set(chat["required"])
    temperature = chat["properties"]["temperature"]
    assert (temperature["minimum"], temperature["maximum"]) == (0.0, 2.0)
    assert chat["properties"]["top_p"]["exclusiveMinimum"] == 0.0
    assert chat["additionalProperties"] is False  # unknown fields are rejected
    roles = {
        components[r["$ref"].rsplit("/", 1)[1]]["properties"]["role"]["const"]
        for r in chat["properties"]["messages"]["items"]["oneOf"]
    }
    assert roles == {"system", "developer", "user", "assistant", "tool"}
    completion = components[
        next(k for k in components if k.endswith("CompletionRequest") and "Chat" not in k)
    ]
    assert {"model", "prompt"} <= set(completion["required"])
    assert {"max_tokens", "logprobs", "echo", "stop", "n", "stream"} <= set(completion["properties"])


def test_prefix_cache_hits_are_counted_and_change_no_output(http):
    """The same long prompt twice: the second run takes its full blocks from the cache (the metric
    grows by them) and answers the same."""
    prompt = "A long shared system prompt that many requests repeat word for word. " * 8

    def hits() -> float:
        name = "gguf_serve_prefix_cache_hit_tokens_total "
        return float(next(x for x in http.get("/metrics").text.splitlines() if x.startswith(name)).split()[1])

    body = {"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    first = http.post("/v1/completions", json=body).json()
    before = hits()
    second = http.post("/v1/completions", json=body).json()
    n_prompt = first["usage"]["prompt_tokens"]
    expected = (n_prompt - 1) // 16 * 16  # the test server's block_size is 16
    assert hits() - before == expected
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": expected}
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
