"""Perplexity in lm-eval's terms: a random-weight GPT-2 with a BPE tokenizer trained here, on the standard
library's documentation, scored as lm-evaluation-harness's `loglikelihood_rolling` defines it.

The reference is written in this file from lm-eval's documented definitions (float64, one forward pass per
window), not from our modules:
  - the text is encoded without special tokens; the first token is conditioned on the prefix token (BOS,
    else EOS);
  - the tokens are cut into consecutive blocks of max_length; a block's input is the max_length tokens
    (prefix included) that end just before its last token, and its tokens are scored once;
  - word_perplexity = exp(-sum(ll) / sum(len(re.split(r"\\s+", doc)))), byte_perplexity =
    exp(-sum(ll) / sum(len(doc.encode("utf-8")))), bits_per_byte = -sum(ll) / sum(bytes) / ln 2.
And, where lm-eval is installed, against lm-eval itself (HFLM.loglikelihood_rolling and its aggregations).
"""

import math
import re

import pytest
import torch

from andromeda.data import python_docs, text_documents
from andromeda.scenarios.perplexity import evaluate
from andromeda.sources.models import build

pytest.importorskip("transformers")
MAX_LEN = 32  # the model's context (n_positions): lm-eval's max_length
N_DOCS = 16


def _texts() -> list[str]:
    """The first N_DOCS documentation topics of at most 1,500 characters: several windows each, a quick test."""
    return [t for t in python_docs() if len(t) <= 1500][:N_DOCS]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = _texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    eot = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), n_positions=MAX_LEN, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=eot, eos_token_id=eot))
    path = tmp_path_factory.mktemp("gpt2-docs")
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def _reference_loglikelihoods(path, texts: list[str]) -> list[float]:
    """lm-eval's rolling log-likelihood of each text, from its definition, in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).double().eval()
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    blocks = []  # (document, tokens fed, fed positions that predict the block's tokens, those tokens)
    for d, text in enumerate(texts):
        ids = tok.encode(text, add_special_tokens=False)
        seq = [prefix, *ids]  # seq[i + 1] is token i; seq[0] conditions token 0
        for start in range(0, len(ids), MAX_LEN):  # the block of tokens start .. last
            last = min(start + MAX_LEN, len(ids)) - 1
            first_fed = max(0, last + 1 - MAX_LEN)  # in seq: the MAX_LEN entries before token `last`
            # token i (= seq[i + 1]) is predicted at fed position i - first_fed
            blocks.append((d, seq[first_fed : last + 1], list(range(start - first_fed, last + 1 - first_fed)),
                           ids[start : last + 1]))
    out = [0.0] * len(texts)
    by_len: dict[int, list] = {}
    for blk in blocks:
        by_len.setdefault(len(blk[1]), []).append(blk)
    for group in by_len.values():  # equal lengths: one float64 forward pass, no padding
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([g[1] for g in group])).logits.double(), -1)  # (B, N, V)
        for row, (d, _, pos, targets) in enumerate(group):
            out[d] += float(logp[row, pos, targets].sum())
    return out


def _lm_eval_metrics(lls: list[float], texts: list[str]) -> dict[str, float]:
    nll = -sum(lls)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"word_ppl": math.exp(nll / words), "byte_ppl": math.exp(nll / n_bytes),
            "bits_per_byte": nll / n_bytes / math.log(2)}


def _ours(path, texts, **kw):
    bundle = build(f"hf:{path}", torch.device("cpu"), torch.float32)
    docs = text_documents(texts, bundle.tokenizer)
    return evaluate(bundle, docs, seq_len=bundle.facts.max_seq_len, words="lm-eval", **kw)


def test_lm_eval_mode_reproduces_lm_eval_definitions(gpt2_dir):
    texts = _texts()
    lls = _reference_loglikelihoods(gpt2_dir, texts)
    ref = _lm_eval_metrics(lls, texts)
    m, info = _ours(gpt2_dir, texts, batch=4)
    assert m["windows"] > 2 * N_DOCS  # documents longer than the context: several windows each
    assert m["documents_whole"] == m["documents_total"] == N_DOCS and "warnings" not in info
    assert info["words"] == "lm-eval"
    for key in ("word_ppl", "byte_ppl", "bits_per_byte"):
        assert m[key] == pytest.approx(ref[key], rel=1e-6), key
    # whitespace words (our default): len(doc.split()), without the empty word lm-eval counts after a final newline
    ws, ws_info = evaluate(build(f"hf:{gpt2_dir}", torch.device("cpu"), torch.float32),
                           text_documents(texts, _tokenizer(gpt2_dir)), seq_len=MAX_LEN, batch=4)
    ws_words = sum(len(t.split()) for t in texts)
    assert ws_info["words"] == "whitespace" and ws["words_scored"] == ws_words < m["words_scored"]
    nll = -sum(lls)
    assert ws["word_ppl"] == pytest.approx(math.exp(nll / ws_words), rel=1e-6)


def _tokenizer(path):
    from andromeda.model import HFTokenizer

    return HFTokenizer(path)


def test_lm_eval_itself_agrees(gpt2_dir):
    """Optional: lm-evaluation-harness's HFLM on the same model, tokenizer and documents."""
    pytest.importorskip("lm_eval.models.huggingface")  # lm-eval with its hf extra (accelerate, peft)
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    texts = _texts()
    lm = HFLM(pretrained=str(gpt2_dir), tokenizer=str(gpt2_dir), batch_size=4, max_length=MAX_LEN, device="cpu",
              dtype="float32")
    reqs = [Instance(request_type="loglikelihood_rolling", doc={"text": t}, arguments=(t,), idx=0) for t in texts]
    lls = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    words = [(ll, ConfigurableTask.count_words(t)) for ll, t in zip(lls, texts, strict=True)]
    n_bytes = [(ll, ConfigurableTask.count_bytes(t)) for ll, t in zip(lls, texts, strict=True)]
    theirs = {"word_ppl": weighted_perplexity(words), "byte_ppl": weighted_perplexity(n_bytes),
              "bits_per_byte": bits_per_byte(n_bytes)}
    m, _ = _ours(gpt2_dir, texts, batch=4)
    print({k: (m[k], theirs[k]) for k in theirs})
    for key, value in theirs.items():
        assert m[key] == pytest.approx(value, rel=1e-6), key
    assert -sum(lls) == pytest.approx(m["cross_entropy_nats"] * m["tokens_scored"], rel=1e-6)
