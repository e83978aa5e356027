//! Corpus readers: documents of a `.txt`, `.jsonl` or `.parquet` file, or of a folder of such
//! files read one after the other, streamed with bounded memory (one document, or one parquet
//! batch of 1,024 documents).
//!
//! - `.txt`: documents are separated by blank lines (lines empty or holding only
//!   whitespace); a document is its lines joined by `\n`, each line without its `\n` or
//!   `\r\n` terminator. Runs of blank lines, and blank lines at the start or end, separate
//!   nothing: a text file has no empty documents.
//! - `.jsonl` (also `.json`, `.ndjson`): one JSON object per line with a string field `text`;
//!   other fields are ignored, blank lines are skipped, an empty `text` is an (empty) document.
//! - `.parquet`: a column `text` (string, large string or string view); a null is an error.
//!
//! A UTF-8 byte-order mark at the start of a text or JSON-lines file is skipped. A document's
//! index is its number in file order, counting from 0. Byte spans in the store
//! are offsets into exactly the text these readers return.
//!
//! A folder (a downloaded Hugging Face dataset split is one) is the concatenation of its files
//! of one format, sorted by name; its hidden files (`.name`) and files of other extensions
//! are ignored, sub-folders are not entered, and document indices run on across files. A file
//! boundary always ends a document.
//!
//! Identity: the store manifest records the corpus's sha256. For one file it is the sha256 of
//! its bytes (as it always was); for several files it is the sha256 of their sha256s, each as
//! 64 hex digits and a `\n`, in reading order. So a corpus's identity depends on its files'
//! contents and order, not on their names or the folder's place, and a folder holding one file
//! has that file's identity.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::array::{Array, LargeStringArray, StringArray, StringViewArray};
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::{Error, Result};

/// The formats a corpus file can have, chosen by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CorpusFormat {
    /// `.txt`: documents separated by blank lines.
    Text,
    /// `.jsonl`, `.json`, `.ndjson`: a `text` field per line.
    JsonLines,
    /// `.parquet`: a `text` column.
    Parquet,
}

impl CorpusFormat {
    /// The format of `path`, by extension.
    pub fn of(path: &Path) -> Option<CorpusFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" => Some(CorpusFormat::Text),
            "jsonl" | "json" | "ndjson" => Some(CorpusFormat::JsonLines),
            "parquet" => Some(CorpusFormat::Parquet),
            _ => None,
        }
    }
}

/// One document of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Its number in file order, from 0.
    pub index: u64,
    pub text: String,
}

/// A corpus: one file, or a folder of files of one format read in name order.
///
/// ```no_run
/// # fn main() -> concord_store::Result<()> {
/// let corpus = concord_store::Corpus::open("data/cache/corpus/shakespeare.jsonl".as_ref())?;
/// let sha = corpus.sha256()?; // for the manifest
/// for doc in corpus.documents()?.take(100) {
///     let doc = doc?; // errors name the file and line or row
/// #   let _ = (doc.index, doc.text, &sha);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Corpus {
    path: PathBuf,
    files: Vec<PathBuf>,
    format: CorpusFormat,
}

impl Corpus {
    /// Opens `path`, a file or a folder of files of one format, checking the format and that
    /// the corpus holds at least one document.
    pub fn open(path: &Path) -> Result<Corpus> {
        // A missing path is reported as missing, not as a file of an unknown format.
        fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let (files, format) = if path.is_dir() {
            folder_files(path)?
        } else {
            let format = CorpusFormat::of(path).ok_or_else(|| Error::CorpusFormat {
                path: path.to_owned(),
            })?;
            (vec![path.to_owned()], format)
        };
        let corpus = Corpus {
            path: path.to_owned(),
            files,
            format,
        };
        match corpus.documents()?.next() {
            None => Err(Error::EmptyCorpus {
                path: path.to_owned(),
            }),
            Some(Err(e)) => Err(e),
            Some(Ok(_)) => Ok(corpus),
        }
    }

    /// The path it was opened with (a file or a folder).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files read, in reading order (the path itself when it is a file).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn format(&self) -> CorpusFormat {
        self.format
    }

    /// The corpus's identity: the sha256 (hex) of the file's bytes, or for several files the
    /// sha256 of their sha256s (see the module's documentation).
    pub fn sha256(&self) -> Result<String> {
        if let [one] = self.files.as_slice() {
            return Ok(concord_core::fsutil::sha256_file(one)?);
        }
        let mut list = String::with_capacity(self.files.len() * 65);
        for file in &self.files {
            list.push_str(&concord_core::fsutil::sha256_file(file)?);
            list.push('\n');
        }
        Ok(concord_core::fsutil::sha256_bytes(list.as_bytes()))
    }

    /// The documents in reading order; the iterator ends after the first error.
    pub fn documents(&self) -> Result<Documents> {
        let path = self.files[0].clone();
        let source = open_source(&path, self.format)?;
        Ok(Documents {
            path,
            rest: self.files[1..].iter().rev().cloned().collect(),
            format: self.format,
            source,
            index: 0,
            file_start: 0,
            done: false,
        })
    }
}

/// The corpus files of a folder, sorted by name, and their one format.
fn folder_files(dir: &Path) -> Result<(Vec<PathBuf>, CorpusFormat)> {
    let mut files: Vec<(PathBuf, CorpusFormat)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !path.is_file() {
            continue;
        }
        if let Some(format) = CorpusFormat::of(&path) {
            files.push((path, format));
        }
    }
    files.sort();
    let Some(&(_, format)) = files.first() else {
        return Err(Error::NoCorpusFiles {
            dir: dir.to_owned(),
        });
    };
    if let Some((other, _)) = files.iter().find(|(_, f)| *f != format) {
        return Err(Error::MixedCorpus {
            dir: dir.to_owned(),
            first: files[0].0.clone(),
            other: other.clone(),
        });
    }
    Ok((files.into_iter().map(|(p, _)| p).collect(), format))
}

/// Opens one file of a corpus for reading.
fn open_source(path: &Path, format: CorpusFormat) -> Result<Source> {
    let path = path.to_owned();
    let source = match format {
        CorpusFormat::Text | CorpusFormat::JsonLines => {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            Source::Lines {
                reader: BufReader::with_capacity(1 << 16, file),
                line: 0,
                buf: Vec::new(),
            }
        }
        CorpusFormat::Parquet => {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| Error::parquet(&path, e))?;
            let fields = builder.schema().fields();
            let Some(col) = fields.iter().position(|f| f.name() == "text") else {
                let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
                return Err(Error::Schema {
                    path,
                    reason: format!("no \"text\" column (columns: {})", names.join(", ")),
                });
            };
            let ty = fields[col].data_type();
            if !matches!(
                ty,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Err(Error::Schema {
                    path,
                    reason: format!("column \"text\" is {ty}, not a string"),
                });
            }
            let mask = ProjectionMask::roots(builder.parquet_schema(), [col]);
            let reader = builder
                .with_projection(mask)
                .with_batch_size(1024)
                .build()
                .map_err(|e| Error::parquet(&path, e))?;
            Source::Parquet {
                reader,
                batch: Vec::new(),
                next: 0,
            }
        }
    };
    Ok(source)
}

#[derive(Debug)]
enum Source {
    Lines {
        reader: BufReader<File>,
        line: u64,
        buf: Vec<u8>,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        batch: Vec<Option<String>>,
        next: usize,
    },
}

/// The documents of a [`Corpus`], streamed.
#[derive(Debug)]
pub struct Documents {
    /// The file being read.
    path: PathBuf,
    /// The files still to read, the next one last.
    rest: Vec<PathBuf>,
    format: CorpusFormat,
    source: Source,
    index: u64,
    /// The index of the current file's first document.
    file_start: u64,
    done: bool,
}

/// The JSON-lines record: only `text` is looked at.
#[derive(serde::Deserialize)]
struct JsonLine {
    /// `None` when the field is absent; `Some(Value::Null)` for `"text": null`.
    #[serde(default, deserialize_with = "present")]
    text: Option<serde_json::Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

impl Documents {
    /// Reads the next line without its terminator; `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<(u64, String)>> {
        let Source::Lines { reader, line, buf } = &mut self.source else {
            unreachable!("only line formats read lines")
        };
        buf.clear();
        let n = reader
            .read_until(b'\n', buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        *line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let mut text = String::from_utf8(std::mem::take(buf)).map_err(|_| Error::InvalidUtf8 {
            path: self.path.clone(),
            line: *line,
        })?;
        if *line == 1 && text.starts_with('\u{feff}') {
            // A byte-order mark is not text.
            text.drain(..3);
        }
        Ok(Some((*line, text)))
    }

    fn next_text(&mut self) -> Result<Option<String>> {
        let mut doc: Option<String> = None;
        while let Some((_, line)) = self.next_line()? {
            if line.trim().is_empty() {
                if doc.is_some() {
                    break;
                }
                continue;
            }
            match &mut doc {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&line);
                }
                None => doc = Some(line),
            }
        }
        Ok(doc)
    }

    fn next_json(&mut self) -> Result<Option<String>> {
        while let Some((line, text)) = self.next_line()? {
            if text.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| Error::BadLine {
                path: self.path.clone(),
                line,
                reason,
            };
            // serde reads a struct from an array too (`["..."]`, by position): only objects.
            if !text.trim_start().starts_with('{') {
                return Err(bad("not a JSON object with a \"text\" field".into()));
            }
            let record: JsonLine = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not a JSON object with a \"text\" field: {e}")))?;
            return match record.text {
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(serde_json::Value::Null) => Err(bad("field \"text\" is null".into())),
                Some(other) => Err(bad(format!("field \"text\" is not a string: {other}"))),
                None => Err(bad("no \"text\" field".into())),
            };
        }
        Ok(None)
    }

    fn next_parquet(&mut self) -> Result<Option<String>> {
        let Source::Parquet {
            reader,
            batch,
            next,
        } = &mut self.source
        else {
            unreachable!("only parquet reads batches")
        };
        while *next == batch.len() {
            let Some(rb) = reader.next() else {
                return Ok(None);
            };
            let rb = rb.map_err(|e| Error::arrow(&self.path, e))?;
            let col = rb.column(0);
            let any = col.as_any();
            *batch = if let Some(a) = any.downcast_ref::<StringArray>() {
                a.iter().map(|s| s.map(str::to_owned)).collect()
            } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
                a.iter().map(|s| s.map(str::to_owned)).collect()
            } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
                a.iter().map(|s| s.map(str::to_owned)).collect()
            } else {
                return Err(Error::Schema {
                    path: self.path.clone(),
                    reason: format!("column \"text\" is {}", col.data_type()),
                });
            };
            *next = 0;
        }
        let text = batch[*next].take();
        *next += 1;
        match text {
            Some(t) => Ok(Some(t)),
            None => Err(Error::BadRow {
                path: self.path.clone(),
                row: self.index - self.file_start,
                reason: "\"text\" is null".into(),
            }),
        }
    }
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let text = loop {
            let text = match self.format {
                CorpusFormat::Text => self.next_text(),
                CorpusFormat::JsonLines => self.next_json(),
                CorpusFormat::Parquet => self.next_parquet(),
            };
            // At the end of a file, go on with the next one.
            if let Ok(None) = text
                && let Some(next) = self.rest.pop()
            {
                match open_source(&next, self.format) {
                    Ok(source) => {
                        self.path = next;
                        self.source = source;
                        self.file_start = self.index;
                        continue;
                    }
                    Err(e) => break Err(e),
                }
            }
            break text;
        };
        match text {
            Ok(Some(text)) => {
                let doc = Document {
                    index: self.index,
                    text,
                };
                self.index += 1;
                Some(Ok(doc))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
