//! Span attribute values.

/// An attribute value: the OTLP `AnyValue` kinds sonde uses.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    StrArray(Vec<String>),
}
