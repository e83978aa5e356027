//! The study report: figures rendered to SVG with plotters, a self-contained HTML page, a
//! markdown twin, and `results.parquet` with one row per compared pair.
//!
//! The crate renders what it is given and computes nothing about SAEs: the study runner fills a
//! [`Report`] with numbers the run measured, and [`write`] lays it out on disk.

mod error;
pub mod plot;
mod render;
pub mod results;

pub use error::{Error, Result};
pub use render::write;

/// One figure: an SVG document with its title and caption.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// A file-name-safe identifier, unique within the report.
    pub id: String,
    pub title: String,
    /// What was compared, on which data, against which null.
    pub caption: String,
    pub svg: String,
}

/// A table of text cells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// One of the study's questions, answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub question: String,
    /// Our number with its interval, as text.
    pub ours: String,
    /// What the published anchors report.
    pub anchor: String,
    /// Agreeing or not, and why.
    pub verdict: String,
}

/// A section of the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    pub heading: String,
    /// Paragraphs of plain text.
    pub paragraphs: Vec<String>,
    pub figures: Vec<Figure>,
    pub tables: Vec<Table>,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub title: String,
    pub intro: Vec<String>,
    pub findings: Vec<Finding>,
    pub sections: Vec<Section>,
    /// The "Caveats" section the verdicts refer to, after the other sections: one paragraph
    /// each.
    pub caveats: Vec<String>,
}

impl Report {
    /// Every figure of the report, in order.
    pub fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.sections.iter().flat_map(|s| s.figures.iter())
    }
}
