import json

from components.curate.decontaminate import SHIPPED, build_index, decontamination_filter, eval_pairs
from components.curate.document import Document
from components.curate.words import RegexWordTokenizer

TOKENIZER = RegexWordTokenizer()


def decont(tmp_path, extra=()):
    config = build_index(tmp_path / "index", list(extra), 13, TOKENIZER)
    return decontamination_filter(tmp_path / "index", config, TOKENIZER, None)


def test_shipped_evaluation_sets_are_found():
    names = {p.name for p in SHIPPED}
    assert {"shakespeare_cloze.jsonl", "gsm8k_mini.jsonl", "gsm8k_train.jsonl"} <= names


def test_document_quoting_a_benchmark_question_is_dropped(tmp_path):
    question, _ = eval_pairs(next(p for p in SHIPPED if p.name == "gsm8k_mini.jsonl"))[0]
    text = f"Homework help forum. Today's puzzle: {question} Reply below with your answer!"
    f = decont(tmp_path)
    d = Document(text, "web.jsonl", 7)
    assert f.filter(d) == (False, "contaminated")
    assert d.metadata["contaminated_task"] == "gsm8k_mini"


def test_normalization_does_not_hide_a_match(tmp_path):
    context, gold = eval_pairs(next(p for p in SHIPPED if p.name == "shakespeare_cloze.jsonl"))[0]
    shouted = (context + "\n" + gold).upper().replace(",", " ,")
    assert decont(tmp_path).filter(Document(shouted, "f", 1)) == (False, "contaminated")


def test_a_shorter_shared_span_is_not_contamination(tmp_path):
    question, _ = eval_pairs(next(p for p in SHIPPED if p.name == "gsm8k_mini.jsonl"))[0]
    ten_words = " ".join(question.split()[:10])  # "Janet’s" is two tokens: 11 of the 13 needed
    assert decont(tmp_path).filter(Document(f"{ten_words} and then something else entirely.", "f", 1)) is True


def test_extra_evaluation_files_are_indexed(tmp_path):
    extra = tmp_path / "my_eval.jsonl"
    secret = "the secret benchmark sentence that nobody should ever train on because it is held out for tests"
    extra.write_text(json.dumps({"text": secret}) + "\n")
    f = decont(tmp_path, [str(extra)])
    d = Document("Leaked: " + secret, "f", 1)
    assert f.filter(d) == (False, "contaminated") and d.metadata["contaminated_task"] == "my_eval"
