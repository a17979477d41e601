"""Issue 13, faults 6 / 7 / 9: text that is not valid Unicode, damaged compressed input, and the
input forms the README promises (TSV corpora, header rows, huge one-line documents).

Policy under test: text that is not valid Unicode is refused (file:line, or the CLI option), never
repaired; every compressed reader names the file and says truncated / corrupt / not that format;
a failed first read leaves no new index folder; the tokenizer only ever sees a bounded prefix.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.cli import main
from mice_index.errors import SearchError, SourceError
from mice_index.runs import RunError, read_run, write_run
from mice_index.runs.trec import ScoredDoc
from mice_index.sources import Document, Query, count_documents, read_documents, read_qrels, read_queries
from mice_index.store import IndexReader
from mice_index.text import bounded_token_ids, char_budget, check_argument
from mice_index.train.teachers import TeacherFileError, read_jsonl_scores, read_msmarco_triplets

CORPUS3 = [
    {"_id": "d1", "title": "Apples", "text": "Red apples grow in cool orchards and ripen in autumn."},
    {"_id": "d2", "title": "Trains", "text": "Night trains carry sleeping passengers across the plains."},
    {"_id": "d3", "title": "Tides", "text": "The moon pulls the sea and causes two tides a day."},
]
SURROGATE_LINE = '{"_id": "d4", "title": "Broken", "text": "broken \\udc80 surrogate"}'  # valid JSON


def corpus3_bytes() -> bytes:
    return "".join(json.dumps(d) + "\n" for d in CORPUS3).encode()


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def raises_one_line(fn, exc_type, *fragments) -> str:
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def cli_one_line(monkeypatch, capsys, argv, *fragments) -> str:
    """Run `mice-index ARGV` in-process: exit code 2 and one stderr line holding all fragments."""
    monkeypatch.setattr(sys, "argv", ["mice-index", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def mice_dir(tiny_mice, tmp_path):
    return tiny_mice.save(tmp_path / "mice")


def _cfg(mice_dir, **kw):
    return BuildConfig(**{"model": str(mice_dir), "codec": "fp16", "shard_docs": 2, "dense": "none",
                          "dtype": "fp32", **kw})


# ============================================================================ 6: not valid Unicode


def test_surrogate_in_document_text_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "corpus.jsonl", corpus3_bytes() + SURROGATE_LINE.encode() + b"\n")
    it = read_documents(path)
    assert [d.doc_id for d in (next(it), next(it), next(it))] == ["d1", "d2", "d3"]  # lazy: good lines first
    raises_one_line(lambda: next(it), SourceError, f"{path}:4:", "'d4'", "field 'text'", "not valid Unicode",
                    "'\\udc80'")


def test_surrogate_in_title_and_id(tmp_path):
    title = write(tmp_path / "t.jsonl", '{"_id": "a", "title": "x \\ud800", "text": "fine"}\n')
    raises_one_line(lambda: list(read_documents(title)), SourceError, f"{title}:1:", "field 'title'")
    doc_id = write(tmp_path / "i.jsonl", '{"_id": "a\\udfff", "text": "fine"}\n')
    raises_one_line(lambda: list(read_documents(doc_id)), SourceError, f"{doc_id}:1:", "field '_id'")


def test_surrogate_pair_escapes_are_valid(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"_id": "a", "text": "apple \\ud83c\\udf4e pie"}\n')
    assert list(read_documents(path)) == [Document("a", "apple \U0001F34E pie", "")]


@pytest.mark.parametrize("name, content, line", [
    ("q.jsonl", '{"_id": "q1", "text": "fine"}\n{"_id": "q2", "text": "\\ud83c"}\n', 2),
    ("q.jsonl", '{"_id": "q\\ud83c", "text": "fine"}\n', 1),
])
def test_surrogate_in_queries_file(tmp_path, name, content, line):
    path = write(tmp_path / name, content)
    raises_one_line(lambda: list(read_queries(path)), SourceError, f"{path}:{line}:", "not valid Unicode")


def test_surrogate_in_teacher_file(tmp_path):
    path = write(tmp_path / "scores.jsonl", '{"query_id": "q1", "doc_id": "d1", "score": 1.0}\n'
                                            '{"query_id": "q1", "doc_id": "d\\udc80", "score": 0.5}\n')
    raises_one_line(lambda: list(read_jsonl_scores(path)), TeacherFileError, f"{path}:2:", "field 'doc_id'",
                    "not valid Unicode")


def test_surrogate_from_ir_datasets(monkeypatch):
    from mice_index.sources import readers

    class Rec:
        doc_id, text, title = "d1", "broken \udc80", ""

    monkeypatch.setattr(readers.irds, "iterate", lambda src, kind, convert: iter([convert(Rec())]))
    raises_one_line(lambda: list(read_documents("irds:fake")), SourceError, "irds:fake: document #1", "text",
                    "not valid Unicode")


def test_text_entering_through_python_api(tmp_path, tiny_mice):
    with pytest.raises(SourceError, match=r"text #1 of the batch is not valid Unicode"):
        tiny_mice.tokenize(["fine", "broken \udc80"], 16)
    with pytest.raises(RunError, match="run tag"):
        write_run(tmp_path / "run.txt", [ScoredDoc("q1", "d1", 1.0)], tag="t\udce9")
    assert not (tmp_path / "run.txt").exists()
    with pytest.raises(SearchError, match=r"--query is not valid UTF-8 \(byte 0xe9 at character 3\)"):
        check_argument("caf\udce9", "--query", SearchError)


def test_build_refuses_surrogate_document_and_leaves_no_folder(tmp_path, mice_dir, monkeypatch, capsys):
    corpus = write(tmp_path / "corpus3.jsonl", corpus3_bytes() + SURROGATE_LINE.encode() + b"\n")
    with pytest.raises(SourceError, match=r"corpus3.jsonl:4: document 'd4'"):
        build_index(corpus, tmp_path / "idx", _cfg(mice_dir, shard_docs=8))
    assert not (tmp_path / "idx").exists()
    cli_one_line(monkeypatch, capsys, ["build", "--corpus", str(corpus), "--index", str(tmp_path / "idx2"),
                                       "--model", str(mice_dir), "--dense", "none", "--quiet"],
                 f"{corpus}:4:", "not valid Unicode")
    assert not (tmp_path / "idx2").exists()


def test_training_config_not_utf8(tmp_path):
    from mice_index.train.config import TrainConfigError, load_config

    cfg = write(tmp_path / "c.toml", b'[train]\nloss = "caf\xe9"\n')
    raises_one_line(lambda: load_config(cfg), TrainConfigError, str(cfg), "invalid UTF-8 at byte 19")
    lone = write(tmp_path / "l.toml", '[train]\nloss = "\\ud800"\n')
    raises_one_line(lambda: load_config(lone), TrainConfigError, str(lone), "invalid TOML")


@pytest.mark.parametrize("argv, option", [
    (["search", "--index", "nowhere", "--query", "caf\udce9"], "--query"),
    (["train", "--set", "train.loss=caf\udce9"], "--set"),
    (["search", "--index", "nowhere", "--queries", "q.tsv", "--run", "r.txt", "--run-tag", "t\udce9"], "--run-tag"),
    (["score", "--corpus", "nowhere", "--query", "caf\udce9"], "--query"),
    (["build", "--corpus", "nowhere", "--index", "i", "--text-field", "t\udce9xt"], "--text-field"),
])
def test_cli_arguments_not_utf8(monkeypatch, capsys, argv, option):
    cli_one_line(monkeypatch, capsys, argv, f"{option} is not valid UTF-8", "byte 0xe9")


def test_cli_raw_latin1_byte_in_argv(tmp_path):
    """The real route: the shell hands Python a raw 0xe9 byte (decoded with surrogateescape)."""
    proc = subprocess.run([sys.executable, "-m", "mice_index", "search", "--index", str(tmp_path / "none"),
                           "--query", b"caf\xe9"], capture_output=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode("utf-8", "replace").strip()
    assert len(err.splitlines()) == 1 and "--query is not valid UTF-8 (byte 0xe9" in err, err


# ============================================================================ 7: damaged compressed input


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}
FORMAT = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}


def many_docs() -> bytes:
    lines = [json.dumps({"_id": f"d{i}", "text": f"{CORPUS3[i % 3]['text']} number {i * 7919 % 1009}"})
             for i in range(400)]
    return ("\n".join(lines) + "\n").encode()


def test_exact_truncated_gzip_build_one_line_exit2(tmp_path, monkeypatch, capsys):
    trunc = write(tmp_path / "trunc.jsonl.gz", gzip.compress(corpus3_bytes())[:150])  # gzip -c | head -c 150
    cli_one_line(monkeypatch, capsys, ["build", "--corpus", str(trunc), "--index", str(tmp_path / "idx"), "--quiet"],
                 str(trunc), "truncated gzip file")
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_truncated_compressed_corpus(tmp_path, suffix):
    data = COMPRESSORS[suffix](many_docs())
    good = write(tmp_path / f"ok.jsonl{suffix}", data)
    assert count_documents(good) == 400 and len(list(read_documents(good))) == 400
    trunc = write(tmp_path / f"trunc.jsonl{suffix}", data[: len(data) // 2])
    for fn in (lambda: count_documents(trunc), lambda: list(read_documents(trunc))):
        raises_one_line(fn, SourceError, str(trunc), f"truncated {FORMAT[suffix]} file")


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_corrupt_compressed_corpus(tmp_path, suffix):
    data = bytearray(COMPRESSORS[suffix](many_docs()))
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
    bad = write(tmp_path / f"bad.jsonl{suffix}", bytes(data))
    raises_one_line(lambda: list(read_documents(bad)), SourceError, str(bad), f"corrupt {FORMAT[suffix]} data")


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_plain_file_with_compressed_name(tmp_path, suffix):
    fake = write(tmp_path / f"fake.jsonl{suffix}", corpus3_bytes())
    article = "an" if suffix == ".xz" else "a"
    raises_one_line(lambda: count_documents(fake), SourceError, str(fake), f"not {article} {FORMAT[suffix]} file")


def test_unsupported_and_unnamed_compression(tmp_path):
    zst = write(tmp_path / "c.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    raises_one_line(lambda: list(read_documents(zst)), SourceError, str(zst), "zstd-compressed files are not supported")
    unnamed = write(tmp_path / "c.jsonl", gzip.compress(corpus3_bytes()))
    raises_one_line(lambda: list(read_documents(unnamed)), SourceError, f"{unnamed}:1:", "invalid UTF-8",
                    "looks gzip")
    empty = write(tmp_path / "e.jsonl.xz", b"")  # an empty file is an empty corpus, not a bad stream
    raises_one_line(lambda: list(read_documents(empty)), SourceError, "no documents")


def test_truncated_queries_qrels_run_and_teacher_files(tmp_path):
    """Every reader goes through the same decompression: each names its file."""
    files = {
        "queries.tsv.gz": (b"".join(b"q%d\tquery number %d\n" % (i, i) for i in range(300)), read_queries),
        "qrels.tsv.bz2": (b"".join(b"q%d\td%d\t1\n" % (i, i) for i in range(300)), read_qrels),
        "run.txt.xz": (b"".join(b"q%d Q0 d%d 1 1.0 t\n" % (i, i) for i in range(300)), read_run),
        "teacher.tsv.gz": (b"".join(b"1.0\t0.5\tq%d\td%d\td%d\n" % (i, i, i + 1) for i in range(300)),
                           read_msmarco_triplets),
    }
    for name, (content, reader) in files.items():
        data = COMPRESSORS["." + name.rsplit(".", 1)[1]](content)
        path = write(tmp_path / name, data[: len(data) // 2])
        raises_one_line(lambda: list(reader(path)), SourceError, str(path), "truncated")


# ============================================================================ 9: input forms


@pytest.mark.parametrize("lines, expected", [
    (["d1\tRed apples grow.", "d2\tNight trains."], [Document("d1", "Red apples grow."),
                                                     Document("d2", "Night trains.")]),  # MS MARCO collection.tsv
    (["id\ttext", "d1\tRed apples grow.", "d2\tNight trains."], [Document("d1", "Red apples grow."),
                                                                 Document("d2", "Night trains.")]),
    (["pid\tpassage", "d1\tRed apples grow."], [Document("d1", "Red apples grow.")]),
    (["d1\tApples\tRed apples grow.", "d2\tTrains\tNight\ttrains."],  # 3 columns: id, title, text
     [Document("d1", "Red apples grow.", "Apples"), Document("d2", "Night\ttrains.", "Trains")]),
    (["DocID\tTitle\tBody", "d1\tApples\tRed apples grow."], [Document("d1", "Red apples grow.", "Apples")]),
    (["doc_id\turl\ttitle\ttext", "d1\thttp://x\tApples\tRed apples grow."],  # extra column ignored
     [Document("d1", "Red apples grow.", "Apples")]),
    (["text\t_id", "Red apples grow.\td1"], [Document("d1", "Red apples grow.")]),  # header decides the order
])
def test_tsv_corpus_forms_and_headers(tmp_path, lines, expected):
    path = write(tmp_path / "collection.tsv", "\n".join(lines) + "\n")
    assert list(read_documents(path)) == expected
    assert count_documents(path) == len(expected)
    gz = write(tmp_path / "collection.tsv.gz", gzip.compress(path.read_bytes()))
    assert list(read_documents(gz)) == expected


def test_corpus_format_from_suffix_or_first_line(tmp_path):
    as_jsonl = write(tmp_path / "corpus.txt", corpus3_bytes())  # .txt: the first line decides
    assert [d.doc_id for d in read_documents(as_jsonl)] == ["d1", "d2", "d3"]
    as_tsv = write(tmp_path / "corpus", "d1\tRed apples.\n")
    assert list(read_documents(as_tsv)) == [Document("d1", "Red apples.")]
    raises_one_line(lambda: list(read_documents(write(tmp_path / "c.jsonl", "d1\tRed apples.\n"))), SourceError,
                    "c.jsonl:1: malformed JSON")  # a named format is not second-guessed


@pytest.mark.parametrize("lines, line, fragment", [
    (["d1\tApples\tRed", "d2 no tab"], 2, "expected 3 tab-separated columns (id, title, text)"),
    (["id\ttext", "d1"], 2, "expected 2 tab-separated columns (id, text) like the header"),
    (["d1\ta\tb\tc"], 1, "2 (id, text) or 3 (id, title, text)"),
    (["d1\tx", "d1\ty"], 2, "duplicate document id 'd1' (first on line 1)"),
    (["d 1\tx"], 1, "contains whitespace"),
])
def test_tsv_corpus_bad_lines(tmp_path, lines, line, fragment):
    path = write(tmp_path / "c.tsv", "\n".join(lines) + "\n")
    raises_one_line(lambda: list(read_documents(path)), SourceError, f"{path}:{line}:", fragment)


@pytest.mark.parametrize("header", ["qid\tquery", "query_id\ttext", "ID\tQuestion", "_id\ttext", "topic\ttitle"])
def test_queries_tsv_header_row_skipped(tmp_path, header):
    path = write(tmp_path / "queries.tsv", f"{header}\nq1\tred apples\nq2\tnight trains\n")
    assert list(read_queries(path)) == [Query("q1", "red apples"), Query("q2", "night trains")]


def test_queries_tsv_without_header_keeps_first_line(tmp_path):
    path = write(tmp_path / "queries.tsv", "1\tquery\n2\ttext of two\n")  # first cell is no id name
    assert [q.query_id for q in read_queries(path)] == ["1", "2"]


@pytest.mark.parametrize("header", ["qid iter docid rel", "query_id\tQ0\tdoc_id\trelevance", "qid 0 docno label"])
def test_qrels_trec_header_row_skipped(tmp_path, header):
    path = write(tmp_path / "qrels.txt", f"{header}\nq1 0 d1 1\nq1 0 d2 0\n")
    assert [(q.query_id, q.doc_id, q.relevance) for q in read_qrels(path)] == [("q1", "d1", 1), ("q1", "d2", 0)]


def test_tsv_corpus_builds_and_searches(tmp_path, mice_dir):
    """MS MARCO style collection.tsv (formerly 'malformed JSON') builds a complete index."""
    path = write(tmp_path / "collection.tsv", "".join(f"{d['_id']}\t{d['text']}\n" for d in CORPUS3))
    build_index(path, tmp_path / "idx", _cfg(mice_dir))
    reader = IndexReader.open(tmp_path / "idx")
    assert reader.doc_ids == ["d1", "d2", "d3"]
    assert reader.texts([2])[0] == ("", CORPUS3[2]["text"])


def test_failed_first_read_leaves_no_new_folder(tmp_path, mice_dir):
    bad = write(tmp_path / "c.jsonl", corpus3_bytes() + b'{"_id": "d4", "text": \n')  # bad 4th line
    with pytest.raises(SourceError, match=r"c.jsonl:4: malformed JSON"):
        build_index(bad, tmp_path / "idx", _cfg(mice_dir, shard_docs=8))  # fails before any shard commit
    assert not (tmp_path / "idx").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is never removed
    with pytest.raises(SourceError):
        build_index(bad, tmp_path / "mine", _cfg(mice_dir, shard_docs=8))
    assert (tmp_path / "mine").is_dir()
    with pytest.raises(SourceError, match=r"c.jsonl:4:"):  # one shard committed: the folder stays (resume)
        build_index(bad, tmp_path / "kept", _cfg(mice_dir, shard_docs=2))
    assert IndexReader.open(tmp_path / "kept", allow_incomplete=True).doc_ids == ["d1", "d2"]
    first_line_bad = write(tmp_path / "c2.jsonl", b"not json\n" + corpus3_bytes())
    with pytest.raises(SourceError, match=r"c2.jsonl:1:"):  # read before the model is even loaded
        build_index(first_line_bad, tmp_path / "idx", BuildConfig(model=str(tmp_path / "no-model")))
    assert not (tmp_path / "idx").exists()


class _Spy:
    """Wraps a tokenizer and records the length of every text handed to it."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def __call__(self, texts, *args, **kw):
        self.lengths += [len(t) for t in ([texts] if isinstance(texts, str) else texts)]
        return self.tok(texts, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_tokenizer_sees_bounded_prefix_with_identical_ids(tiny_mice):
    from mice_index.encoder import DocumentEncoder, EncoderConfig

    long_text = " ".join(f"word{i % 97} tides, moon." for i in range(40_000))  # ~ 800k characters
    whitespace = " " * 30_000 + " ".join(["late words"] * 500)  # the first budget holds no token at all
    texts = [long_text, "short one", whitespace]
    tok = tiny_mice.tokenizer
    for L in (16, 64):
        full = tok(texts, truncation=True, max_length=L + 1, return_attention_mask=False,
                   return_token_type_ids=False)["input_ids"]
        spy = _Spy(tok)
        assert bounded_token_ids(spy, texts, L + 1) == full
        assert max(spy.lengths) <= 64 * char_budget(L + 1) < len(long_text)

    encoder = DocumentEncoder(tiny_mice, EncoderConfig(max_doc_length=64, device="cpu", dtype="fp32"))
    spy = encoder.main.tok = _Spy(tok)
    ids, cut = encoder.main.tokenize([long_text, "short one"])
    assert cut == [True, False] and len(ids[0]) == 64 and max(spy.lengths) <= char_budget(65)

    tiny_mice.tokenizer = spy = _Spy(tok)
    try:
        got, _ = tiny_mice.tokenize([long_text, "short one"], 64)
    finally:
        tiny_mice.tokenizer = tok
    ref = tok([long_text, "short one"], truncation=True, max_length=64, padding=True, return_tensors="pt")
    assert got.tolist() == ref["input_ids"].tolist() and max(spy.lengths) <= char_budget(64)
