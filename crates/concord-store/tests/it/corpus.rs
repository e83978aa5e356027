//! Corpus readers on tiny files, their errors, and the real default corpus.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use concord_store::{Corpus, CorpusFormat, Error};
use parquet::arrow::ArrowWriter;

use crate::support;

fn texts(path: &Path) -> Vec<String> {
    Corpus::open(path)
        .unwrap()
        .documents()
        .unwrap()
        .map(|d| d.unwrap().text)
        .collect()
}

#[track_caller]
fn check_error(path: &Path, needle: &str) {
    let err = match Corpus::open(path) {
        Err(e) => e,
        Ok(c) => c
            .documents()
            .unwrap()
            .find_map(Result::err)
            .expect("an error"),
    };
    let msg = err.to_string();
    assert!(
        msg.contains(needle) && msg.contains(&*path.file_name().unwrap().to_string_lossy()),
        "{msg}"
    );
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut w =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn text_documents_are_separated_by_blank_lines() {
    let dir = support::tmp();
    let path = dir.path().join("c.txt");
    fs::write(
        &path,
        "\n\nFirst line\nsecond line\r\n  \t\nThird é\n\n\n\nlast\n\n",
    )
    .unwrap();
    assert_eq!(texts(&path), ["First line\nsecond line", "Third é", "last"]);
    fs::write(&path, "no newline at end").unwrap();
    assert_eq!(texts(&path), ["no newline at end"]);
    let docs: Vec<u64> = Corpus::open(&path)
        .unwrap()
        .documents()
        .unwrap()
        .map(|d| d.unwrap().index)
        .collect();
    assert_eq!(docs, [0]);
}

#[test]
fn jsonl_reads_the_text_field() {
    let dir = support::tmp();
    let path = dir.path().join("c.jsonl");
    fs::write(&path, "{\"text\": \"a\\nb\", \"id\": 1}\n\n{\"meta\": {\"x\": [1]}, \"text\": \"\"}\r\n{\"text\":\"ü\"}").unwrap();
    assert_eq!(texts(&path), ["a\nb", "", "ü"]);
    fs::write(&path, "\u{feff}{\"text\": \"bom\"}\n").unwrap();
    assert_eq!(texts(&path), ["bom"]);
    let txt = dir.path().join("bom.txt");
    fs::write(&txt, "\u{feff}first\n\nsecond").unwrap();
    assert_eq!(texts(&txt), ["first", "second"]);
}

#[test]
fn parquet_reads_the_text_column() {
    let dir = support::tmp();
    let path = dir.path().join("c.parquet");
    let docs: Vec<String> = (0..2500).map(|i| format!("document {i}")).collect();
    write_parquet(
        &path,
        vec![
            (
                "id",
                Arc::new(UInt32Array::from_iter_values(0..2500)) as ArrayRef,
            ),
            ("text", Arc::new(StringArray::from(docs.clone()))),
        ],
    );
    assert_eq!(texts(&path), docs);
    assert_eq!(Corpus::open(&path).unwrap().format(), CorpusFormat::Parquet);
}

#[test]
fn a_folder_reads_its_files_in_name_order_with_a_content_identity() {
    let dir = support::tmp();
    let split = dir.path().join("train");
    fs::create_dir(&split).unwrap();
    let part = |name: &str, docs: &[Option<&str>]| {
        let texts = Arc::new(StringArray::from(docs.to_vec())) as ArrayRef;
        write_parquet(&split.join(name), vec![("text", texts)]);
    };
    part("0001.parquet", &[Some("third"), Some("fourth")]);
    part("0000.parquet", &[Some("first"), Some("second")]);
    fs::write(split.join("README.md"), "not a corpus file").unwrap();
    fs::write(split.join(".0002.parquet.part"), "half a download").unwrap();
    let corpus = Corpus::open(&split).unwrap();
    assert_eq!(corpus.files().len(), 2);
    let docs: Vec<(u64, String)> = corpus
        .documents()
        .unwrap()
        .map(|d| d.map(|d| (d.index, d.text)).unwrap())
        .collect();
    let expected = [(0, "first"), (1, "second"), (2, "third"), (3, "fourth")];
    assert_eq!(docs, expected.map(|(i, t)| (i, t.to_owned())));
    // The identity: the sha256 of the files' sha256s, in reading order.
    let sha = |p: &Path| concord_core::fsutil::sha256_file(p).unwrap();
    let list = format!(
        "{}\n{}\n",
        sha(&split.join("0000.parquet")),
        sha(&split.join("0001.parquet"))
    );
    let identity = concord_core::fsutil::sha256_bytes(list.as_bytes());
    assert_eq!(corpus.sha256().unwrap(), identity);
    // Moved elsewhere, the same files are the same corpus; one file is its own identity.
    let moved = dir.path().join("moved");
    fs::rename(&split, &moved).unwrap();
    assert_eq!(Corpus::open(&moved).unwrap().sha256().unwrap(), identity);
    let single = dir.path().join("single");
    fs::create_dir(&single).unwrap();
    fs::copy(moved.join("0000.parquet"), single.join("x.parquet")).unwrap();
    assert_eq!(
        Corpus::open(&single).unwrap().sha256().unwrap(),
        sha(&moved.join("0000.parquet"))
    );
    // Text files end their last document at the file boundary.
    let text = dir.path().join("text");
    fs::create_dir(&text).unwrap();
    fs::write(text.join("a.txt"), "one\ntwo").unwrap();
    fs::write(text.join("b.txt"), "three\n\nfour\n").unwrap();
    assert_eq!(texts(&text), ["one\ntwo", "three", "four"]);
    // Errors name the file and its own row, not the running document index.
    fs::rename(moved.join("0001.parquet"), moved.join("0009.parquet")).unwrap();
    let texts = Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef;
    write_parquet(&moved.join("0005.parquet"), vec![("text", texts)]);
    let err = Corpus::open(&moved)
        .unwrap()
        .documents()
        .unwrap()
        .find_map(Result::err)
        .unwrap()
        .to_string();
    assert!(
        err.contains("0005.parquet") && err.contains("row 1:"),
        "{err}"
    );
    // A folder of mixed formats, or of no corpus files, is refused.
    fs::write(moved.join("extra.jsonl"), "{\"text\": \"x\"}\n").unwrap();
    check_error(&moved, "one format");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    check_error(&empty, "no .txt, .jsonl or .parquet files");
}

#[test]
fn bad_corpora_name_the_file_and_the_line_or_row() {
    let dir = support::tmp();
    let p = |name: &str| dir.path().join(name);
    fs::write(p("bad.txt"), b"ok line\n\nbad \xff byte\n").unwrap();
    check_error(&p("bad.txt"), "line 3: invalid UTF-8");
    fs::write(p("missing.jsonl"), "{\"text\": \"x\"}\n{\"body\": \"y\"}\n").unwrap();
    check_error(&p("missing.jsonl"), "line 2: no \"text\" field");
    fs::write(p("number.jsonl"), "{\"text\": 3}\n").unwrap();
    check_error(&p("number.jsonl"), "line 1: field \"text\" is not a string");
    fs::write(p("null.jsonl"), "{\"text\": \"x\"}\n{\"text\": null}\n").unwrap();
    check_error(&p("null.jsonl"), "line 2: field \"text\" is null");
    // serde would read an array as a struct by position: a line must be an object.
    fs::write(p("array.jsonl"), "{\"text\": \"x\"}\n[\"y\"]\n").unwrap();
    check_error(&p("array.jsonl"), "line 2: not a JSON object");
    fs::write(p("broken.jsonl"), "{\"text\": \"x\"}\n{\"text\": \n").unwrap();
    check_error(&p("broken.jsonl"), "line 2: not a JSON object");
    fs::write(p("empty.txt"), "\n \n\n").unwrap();
    check_error(&p("empty.txt"), "holds no documents");
    fs::write(p("empty.jsonl"), "").unwrap();
    check_error(&p("empty.jsonl"), "holds no documents");
    fs::write(p("corpus.csv"), "text\nx\n").unwrap();
    check_error(&p("corpus.csv"), "unknown corpus format");
    check_error(&p("absent.txt"), "absent.txt");
    write_parquet(
        &p("nulls.parquet"),
        vec![(
            "text",
            Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
        )],
    );
    check_error(&p("nulls.parquet"), "row 1: \"text\" is null");
    write_parquet(
        &p("notext.parquet"),
        vec![("body", Arc::new(StringArray::from(vec!["a"])) as ArrayRef)],
    );
    check_error(&p("notext.parquet"), "no \"text\" column (columns: body)");
    write_parquet(
        &p("none.parquet"),
        vec![(
            "text",
            Arc::new(StringArray::from(Vec::<String>::new())) as ArrayRef,
        )],
    );
    check_error(&p("none.parquet"), "holds no documents");
}

#[test]
fn the_default_corpus_reads_in_file_order_with_its_sha256() {
    let path = support::workspace_root().join("data/cache/corpus/shakespeare.jsonl");
    let corpus = Corpus::open(&path).unwrap();
    let mut n = 0u64;
    let mut first = String::new();
    for d in corpus.documents().unwrap() {
        let d = d.unwrap();
        assert_eq!(d.index, n);
        if n == 0 {
            first = d.text;
        }
        n += 1;
    }
    assert_eq!(n, 4618);
    assert!(
        first.starts_with("COUNTESS.\nI play the noble housewife"),
        "{first:.40}"
    );
    let sha = corpus.sha256().unwrap();
    assert_eq!(sha, concord_core::fsutil::sha256_file(&path).unwrap());
    // A missing file is missing, whatever its name; an existing one of another format is
    // named as such.
    let err = Corpus::open(&path.with_extension("md")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let dir = support::tmp();
    let md = dir.path().join("notes.md");
    fs::write(&md, "# notes\n").unwrap();
    assert!(matches!(Corpus::open(&md), Err(Error::CorpusFormat { .. })));
}
