"""'Use this adapter' snippets for one version, written for the server the page came from.

Each is complete as shown (the tests run them against a live server): ``lorahive pull``, PEFT
through ``HF_ENDPOINT``, and ``huggingface_hub.snapshot_download``. A private adapter's
snippets say where the token goes."""

from __future__ import annotations

from dataclasses import dataclass

from lorahive.hub.protocol import VersionInfo

TOKEN_HINT = "<your lorahive token>"
AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
}


@dataclass(frozen=True)
class Snippet:
    key: str
    title: str
    lang: str
    code: str


def snippets(server: str, info: VersionInfo, private: bool) -> list[Snippet]:
    server = server.rstrip("/")
    repo, version = f"{info.namespace}/{info.name}", info.version
    pull = f"lorahive pull {repo}@{version} --url {server} --to ./{info.name}"
    if private:
        pull += ' --token "$LORAHIVE_TOKEN"'
    auto = AUTO_CLASS.get(str(info.summary.get("task_type") or "CAUSAL_LM"), "AutoModel")
    base = info.base_model or "BASE_MODEL"
    token_env = f'os.environ["HF_TOKEN"] = "{TOKEN_HINT}"\n' if private else ""
    peft = (
        "import os\n\n"
        f'os.environ["HF_ENDPOINT"] = "{server}"  # before importing peft / huggingface_hub\n'
        f"{token_env}"
        "from peft import PeftModel\n"
        f"from transformers import {auto}\n\n"
        f"# the base model: a local directory, since HF_ENDPOINT now points at this registry\n"
        f'base = {auto}.from_pretrained("{base}")\n'
        f'model = PeftModel.from_pretrained(base, "{repo}", revision="{version}")\n'
    )
    token_arg = f', token="{TOKEN_HINT}"' if private else ""
    snap = (
        "from huggingface_hub import snapshot_download\n\n"
        f'path = snapshot_download("{repo}", revision="{version}", endpoint="{server}"'
        f"{token_arg})\n"
        "print(path)\n"
    )
    return [
        Snippet("pull", "lorahive CLI", "bash", pull + "\n"),
        Snippet("peft", "PEFT (through HF_ENDPOINT)", "python", peft),
        Snippet("snapshot", "huggingface_hub", "python", snap),
    ]
