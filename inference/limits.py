"""Request limits, written once: app/protocol.py puts them in the request Structs (so decoding refuses a
body beyond them and the OpenAPI schema shows them), AdapterForwardConfig.validate checks each config
against them at the API boundary, and the engine only asserts. The README's Security section lists them."""

MAX_N = 128  # choices per request (and prompts x n <= the server's max_num_seqs)
MAX_STOP_STRINGS = 16  # stop strings per request: OpenAI allows 4, vLLM has no limit
MAX_STOP_CHARS = 256  # characters of one stop string (the output holds back that much text)
MAX_STOP_TOKEN_IDS = 64  # vLLM's extra `stop_token_ids`
MAX_LOGPROBS = 20  # alternatives per token: chat `top_logprobs` (OpenAI's limit), the engine's bound
MAX_COMPLETION_LOGPROBS = 5  # completions `logprobs`: OpenAI's limit (vLLM allows 20)
MAX_LOGIT_BIAS_TOKENS = 1024  # entries of `logit_bias` (OpenAI: 300)
MAX_LOGIT_BIAS = 100.0  # |bias|; -100 bans a token, as OpenAI documents
MAX_CACHE_SALT_CHARS = 256  # vLLM's `cache_salt`; at least one character
MAX_TOOLS = 128  # chat `tools` per request: OpenAI's limit

TEMPERATURE = (0.0, 2.0)  # [min, max]
TOP_P = (0.0, 1.0)  # (min, max]
PENALTY = (-2.0, 2.0)  # presence_penalty and frequency_penalty, [min, max]
MIN_P = (0.0, 1.0)  # [min, max]
MAX_REPETITION_PENALTY = 10.0  # (0, max]; 1 = off
