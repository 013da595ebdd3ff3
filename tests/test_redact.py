"""Secret redaction: each type found and typed, patches keep their shape, ordinary code untouched."""

from __future__ import annotations

import pytest

from repo2model.git.redact import Redactor, entropy

R = Redactor()

SHAPED = {
    "aws_access_key": "AKIAQ3EGRSTUV7WXYZ24",
    "github_token": "ghp_Zx8Qp2LmN4vR7tYu1aB3cD5eF7gH9iJ0kL2m",
    "gitlab_token": "glpat-aB3dE5gH7jK9mN1pQ3sT",
    "slack_token": "xoxb-123456789012-aBcDeFgHiJkLmNoP",
    "slack_webhook": "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX",
    "stripe_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "google_api_key": "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
    "anthropic_api_key": "sk-ant-api03-aB3dE5gH7jK9mN1pQ3sTuVwXyZ",
    "openai_api_key": "sk-proj-aB3dE5gH7jK9mN1pQ3sTT3BlbkFJuVwXyZ0123456789abcd",
    "huggingface_token": "hf_aB3dE5gH7jK9mN1pQ3sTuVwXyZ0123456789",
    "npm_token": "npm_aB3dE5gH7jK9mN1pQ3sTuVwXyZ0123456789",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
}


@pytest.mark.parametrize("kind", sorted(SHAPED))
def test_shaped_tokens_are_replaced_by_their_type(kind):
    value = SHAPED[kind]
    text, counts = R.redact(f'+    let credential_in_code = call("{value}");\n')
    assert value not in text and f"<REDACTED:{kind}>" in text
    assert counts == {kind: 1}


def test_private_key_block_keeps_the_patch_shape():
    patch = (
        "@@ -0,0 +1,5 @@\n"
        "+-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "+b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
        "+QyNTUxOQAAACDc9yMHY2Yd8nQw7PJ0vZkYkN8ZkY9pJk2x0lS7ZyUeFwAAAJgAAAAA\n"
        "+-----END OPENSSH PRIVATE KEY-----\n"
        " fn main() {}\n"
    )
    text, counts = R.redact(patch)
    assert counts == {"private_key": 1}
    assert text.splitlines()[1:5] == ["+<REDACTED:private_key>"] * 4
    assert text.splitlines()[0] == "@@ -0,0 +1,5 @@" and text.endswith(" fn main() {}\n")
    assert text.count("\n") == patch.count("\n")


def test_private_key_cut_by_the_hunk_and_orphan_key_lines():
    patch = (
        "@@ -1,3 +1,3 @@\n"
        " -----BEGIN RSA PRIVATE KEY-----\n"
        "-MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
        "+VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
        "@@ -40,2 +40,2 @@ impl Foo {\n"
        "-qKhbwKfBstIs+bMY2Zkp18gnTxKVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+\n"
        "+let x = 1;\n"
    )
    text, counts = R.redact(patch)
    lines = text.splitlines()
    assert lines[1:4] == [" <REDACTED:private_key>", "-<REDACTED:private_key>", "+<REDACTED:private_key>"]
    assert lines[4] == "@@ -40,2 +40,2 @@ impl Foo {"  # the block ended with its hunk
    assert lines[5] == "-<REDACTED:key_material>" and lines[6] == "+let x = 1;"
    assert counts == {"key_material": 1, "private_key": 1}


@pytest.mark.parametrize(
    "line, kind, secret",
    [
        ('+let password = "Tr0ub4dor&3xq";', "password", "Tr0ub4dor&3xq"),
        ("+DB_PASSWORD=s3cret!x9", "password", "s3cret!x9"),
        ("+DB_PASSWORD=Summer2024", "password", "Summer2024"),
        ('+    db_pass = "x9y8z7w6"', "password", "x9y8z7w6"),
        ("+PASS=hunter22", "password", "hunter22"),
        ('+    "dbPassword": "correct-horse-9",', "password", "correct-horse-9"),
        ('+const SIGNING_KEY: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b";', "generic_secret",
         "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"),
        ("+AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Rk3Lm2N", "aws_secret_key",
         "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Rk3Lm2N"),
        ("+api_key: 'Q29uZ3JhdHMhIFlvdSBmb3VuZCBpdA9x'", "generic_secret", "Q29uZ3JhdHMhIFlvdSBmb3VuZCBpdA9x"),
        ("+url = postgres://admin:Pa55w0rdX@db.internal:5432/chain", "url_password", "Pa55w0rdX"),
    ],
)
def test_values_assigned_to_key_like_names(line, kind, secret):
    text, counts = R.redact(line + "\n")
    assert secret not in text and f"<REDACTED:{kind}>" in text and counts == {kind: 1}
    if kind == "url_password":
        assert "postgres://admin:<REDACTED:url_password>@db.internal" in text  # the user name stays


@pytest.mark.parametrize(
    "line",
    [
        "+    let token = lexer.next_token();",
        "+    password: String,",
        "+fn verify_password(password: &str) -> bool {",
        '+    let key = "balance";',
        "+const MAX_TOKENS: usize = 4096;",
        '+    token_env: str = "REPO2MODEL_TOKEN"',
        '+    let compass = "northwest";',
        "+    tokenizer = Tokenizer.from_file(path)",
        "+    passthrough = true",
        '+    let block_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b";',
        '+    let url = "https://example.com/path?x=1";',
        '+    let dsn = "postgres://user:${DB_PASSWORD}@host/db";',
        '+    password = "password"',
        "+    let secret = Secret::new(rng.gen());",
        "+    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)",
        "+    let token_amount = 1000000000000000000u128;",
        "+    monkey_patch = f3a9c2e81b7d4c6a9e0f1b2c3d4e5f6a",
        # seen in transformers / torch sources
        '+    "token_classification_class": "ForTokenClassification",',
        '+    "DebertaV2Tokenizer": DebertaV2Converter,',
        '+_TOKENIZER_FOR_DOC = "RobertaTokenizer"',
        '+    token_key = "RpcGroupManagementToken"',
        "+LayoutLMv2TokenizerFast = LayoutLMv2Tokenizer",
        '+    pass_name="partitioned_scatter_optimization"',
        '+    backward_pass_autocast = "same_as_forward"',
        "+    # First pass: decided_mask==0, every element participates.",
        '+PASSAGE_FILENAME = "psgs_w100.tsv.pkl"',
        '+    "token2wav_config": Qwen2_5OmniToken2WavConfig,',
        '+    tokenizer: "tokenizers.Tokenizer",',
        # seen in click / axum histories
        '+    assert out == "Password: \\nScrew you.\\n"',
        '+        check_body(b"username=user&password=secure%20password").await;',
    ],
)
def test_ordinary_code_is_left_alone(line):
    assert R.redact(line + "\n") == (line + "\n", {})


def test_allowlist_and_extra_patterns():
    redactor = Redactor(
        extra_patterns={"internal_token": r"itk_[0-9a-f]{32}", "build_secret": r"BUILD_SECRET\((?P<secret>[^)]+)\)"},
        allowlist=[r"AKIA.*EXAMPLE", r"itk_0{32}"],
    )
    text, counts = redactor.redact(
        "+a = AKIAIOSFODNN7EXAMPLE\n"
        "+b = AKIAQ3EGRSTUV7WXYZ24\n"
        f"+c = itk_{'0' * 32}\n"
        f"+d = itk_{'ab12' * 8}\n"
        "+e = BUILD_SECRET(hello world)\n"
    )
    assert "AKIAIOSFODNN7EXAMPLE" in text and "AKIAQ3EGRSTUV7WXYZ24" not in text
    assert f"itk_{'0' * 32}" in text and "ab12ab12" not in text
    assert "+e = BUILD_SECRET(<REDACTED:build_secret>)" in text
    assert counts == {"aws_access_key": 1, "build_secret": 1, "internal_token": 1}


def test_bad_patterns_name_the_key():
    with pytest.raises(ValueError, match="redact_patterns.broken"):
        Redactor(extra_patterns={"broken": "("})
    with pytest.raises(ValueError, match="redact_patterns"):
        Redactor(extra_patterns={"Bad Name": "x"})
    with pytest.raises(ValueError, match="redact_allowlist"):
        Redactor(allowlist=["["])


def test_redaction_is_idempotent_and_keeps_line_count():
    text = "\n".join(f"+x{i} = {v}" for i, v in enumerate(SHAPED.values())) + "\n"
    once, counts = R.redact(text)
    assert sum(counts.values()) == len(SHAPED)
    assert R.redact(once) == (once, {})
    assert once.count("\n") == text.count("\n")


def test_entropy():
    assert entropy("aaaa") == 0.0
    assert entropy("abcd") == 2.0


ENV_PATCH = (
    "@@ -0,0 +1,9 @@\n"
    "+SESSION_SALT=Hq7Zp2Lm9Xv4Rt6K\n"
    "+export COOKIE_SEED='Zx8Qp2LmN4vR7tYu1aB3'\n"
    "+APP_NAME=MyApplication2024\n"
    "+IMAGE=ghcr.io/example/app:1.2.3\n"
    "+DATABASE_HOST=db.internal.example.com\n"
    "+API_BASE=https://api.example.com/v1/x9\n"
    "+RUST_LOG=axum=debug,tower_http=info\n"
    "+CACHE_DIR=/var/cache/app-2024/x9y8z7\n"
    "+PORT=8080\n"
)


@pytest.mark.parametrize("path", [".env", "deploy/.env.production", "config/prod.env", ".envrc"])
def test_env_files_lose_random_values_whatever_the_key(path):
    text, counts = R.redact(ENV_PATCH, path=path)
    assert counts == {"env_secret": 2}
    assert "+SESSION_SALT=<REDACTED:env_secret>\n" in text and "+export COOKIE_SEED='<REDACTED:env_secret>'\n" in text
    kept = ENV_PATCH.splitlines()[3:]
    assert text.splitlines()[3:] == kept  # names, hosts, images, URLs, paths, numbers stay
    # the same text in code, or with no path, is left alone: the rule is for env files only
    assert R.redact(ENV_PATCH, path="src/config.rs") == (ENV_PATCH, {})
    assert R.redact(ENV_PATCH) == (ENV_PATCH, {})


def test_compose_environment_entries_and_the_allowlist():
    compose = (
        "services:\n  web:\n    image: ghcr.io/example/app:1.2.3-rc9\n    environment:\n"
        "      - SESSION_SALT=Hq7Zp2Lm9Xv4Rt6K\n      COOKIE_SEED: Zx8Qp2LmN4vR7tYu1aB3\n      build_id: Zx8Qp2LmN4vR7tYu1aB3\n"
    )
    text, counts = R.redact(compose, path="docker-compose.yml")
    assert counts == {"env_secret": 2} and "Hq7Zp2Lm9Xv4Rt6K" not in text and "COOKIE_SEED: <REDACTED:env_secret>" in text
    assert "build_id: Zx8Qp2LmN4vR7tYu1aB3" in text  # only ENV_NAME: value entries count
    allowing = Redactor(allowlist=[r"Hq7Zp2Lm9Xv4Rt6K"])
    assert allowing.redact("SESSION_SALT=Hq7Zp2Lm9Xv4Rt6K\n", path=".env") == ("SESSION_SALT=Hq7Zp2Lm9Xv4Rt6K\n", {})


def test_paths_are_redacted_consistently_one_component_at_a_time():
    seen = []
    redactor = Redactor(on_redact=lambda kind, value: seen.append((kind, value)))
    path = "keys/AKIAQ3EGRSTUV7WXYZ24.txt"
    assert redactor.redact_path(path) == ("keys/<REDACTED:aws_access_key>.txt", {"aws_access_key": 1})
    assert redactor.redact_path(path) == redactor.redact_path(path)
    assert seen == [("aws_access_key", "AKIAQ3EGRSTUV7WXYZ24")]
    long_path = "src/main/java/com/example/project/service/implementation/UserServiceImplementation.java"
    for ordinary in (long_path, "docs/naïve notes.md", "-leading dash", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b.json"):
        assert redactor.redact_path(ordinary) == (ordinary, {})
