//! Conversions between the API's `Value` and PostgreSQL's wire formats.
//!
//! Parameters: null, bool, int64 and float64 are sent in binary, checked
//! against the parameter's type; text is sent in text format, so PostgreSQL
//! parses it as whatever type the parameter has (numeric, timestamptz, uuid,
//! json, ...); bytes go to bytea. Results arrive in binary and are rendered as
//! the matching `Value`; types without a native `Value` are rendered as their
//! text form where the pooler knows it, otherwise as their raw binary form.

use bytes::BytesMut;
use postgres_types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};
use teresa_proto::connectionpool::{Value, value::Kind as V};

/// A parameter that does not fit its placeholder's type.
#[derive(Debug, thiserror::Error)]
#[error("parameter ${position}: {problem}")]
pub struct ParamError {
    pub position: usize,
    pub problem: String,
}

/// One bound parameter, already checked against its type.
#[derive(Debug)]
pub enum Param {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    Oid(u32),
    F32(f32),
    F64(f64),
    Bytes(Vec<u8>),
    /// Sent in text format and parsed by PostgreSQL.
    Text(String),
}

impl Param {
    /// Converts a `Value` for a parameter of type `ty` (1-based `position`).
    pub fn bind(value: &Value, ty: &Type, position: usize) -> Result<Param, ParamError> {
        let problem = |problem: String| ParamError { position, problem };
        let Some(kind) = &value.kind else {
            return Ok(Param::Null);
        };
        Ok(match (kind, ty) {
            (V::Null(_), _) => Param::Null,
            (V::Bool(b), &Type::BOOL) => Param::Bool(*b),
            (V::Int64(n), &Type::INT8) => Param::I64(*n),
            (V::Int64(n), &Type::INT4) => Param::I32(
                i32::try_from(*n).map_err(|_| problem(format!("{n} does not fit int4")))?,
            ),
            (V::Int64(n), &Type::INT2) => Param::I16(
                i16::try_from(*n).map_err(|_| problem(format!("{n} does not fit int2")))?,
            ),
            (V::Int64(n), &Type::OID) => {
                Param::Oid(u32::try_from(*n).map_err(|_| problem(format!("{n} is not an oid")))?)
            }
            (V::Int64(n), &Type::FLOAT8) => Param::F64(*n as f64),
            (V::Int64(n), &Type::FLOAT4) => Param::F32(*n as f32),
            (V::Float64(f), &Type::FLOAT8) => Param::F64(*f),
            (V::Float64(f), &Type::FLOAT4) => Param::F32(*f as f32),
            (V::Bytes(b), &Type::BYTEA) => Param::Bytes(b.clone()),
            (V::Text(s), _) => Param::Text(s.clone()),
            // Numbers and booleans for other types (numeric, text, ...) go as
            // text, so PostgreSQL's own casting rules decide.
            (V::Int64(n), _) => Param::Text(n.to_string()),
            (V::Float64(f), _) => Param::Text(f.to_string()),
            (V::Bool(b), ty) if is_textual(ty) => Param::Text(b.to_string()),
            (V::Bool(_), ty) => {
                return Err(problem(format!(
                    "a bool cannot be bound to type {}",
                    ty.name()
                )));
            }
            (V::Bytes(_), ty) => {
                return Err(problem(format!(
                    "bytes can only be bound to bytea, not {}",
                    ty.name()
                )));
            }
        })
    }
}

fn is_textual(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Bool(v) => v.to_sql(ty, out),
            Param::I16(v) => v.to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::Oid(v) => v.to_sql(ty, out),
            Param::F32(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Bytes(v) => v.to_sql(ty, out),
            Param::Text(v) => {
                out.extend_from_slice(v.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> postgres_types::Format {
        match self {
            Param::Text(_) => postgres_types::Format::Text,
            _ => postgres_types::Format::Binary,
        }
    }

    to_sql_checked!();
}

/// A result cell of any type, decoded into a `Value`.
pub struct Cell(pub Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(Value {
            kind: Some(decode(ty, raw)?),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(Value {
            kind: Some(V::Null(true)),
        }))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

type DecodeResult = Result<V, Box<dyn std::error::Error + Sync + Send>>;

fn decode(ty: &Type, raw: &[u8]) -> DecodeResult {
    let text = |raw: &[u8]| -> DecodeResult { Ok(V::Text(std::str::from_utf8(raw)?.to_owned())) };
    match *ty {
        Type::BOOL => Ok(V::Bool(bool::from_sql(ty, raw)?)),
        Type::INT2 => Ok(V::Int64(i16::from_sql(ty, raw)?.into())),
        Type::INT4 => Ok(V::Int64(i32::from_sql(ty, raw)?.into())),
        Type::INT8 => Ok(V::Int64(i64::from_sql(ty, raw)?)),
        Type::OID => Ok(V::Int64(u32::from_sql(ty, raw)?.into())),
        Type::FLOAT4 => Ok(V::Float64(f32::from_sql(ty, raw)?.into())),
        Type::FLOAT8 => Ok(V::Float64(f64::from_sql(ty, raw)?)),
        Type::BYTEA => Ok(V::Bytes(raw.to_vec())),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::JSON
        | Type::XML
        | Type::UNKNOWN
        | Type::CHAR => text(raw),
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => text(rest),
            _ => Err("unsupported jsonb version".into()),
        },
        Type::UUID => Ok(V::Text(uuid(raw)?)),
        Type::NUMERIC => Ok(V::Text(numeric(raw)?)),
        Type::DATE => Ok(V::Text(date(i32::from_sql(ty, raw)?))),
        Type::TIMESTAMP => Ok(V::Text(timestamp(i64::from_sql(&Type::INT8, raw)?))),
        Type::TIMESTAMPTZ => Ok(V::Text(timestamp(i64::from_sql(&Type::INT8, raw)?) + "+00")),
        Type::TIME => Ok(V::Text(time_of_day(i64::from_sql(&Type::INT8, raw)?))),
        Type::INTERVAL => Ok(V::Text(interval(raw)?)),
        _ => match ty.kind() {
            // Enum values travel as their label in either format.
            Kind::Enum(_) => text(raw),
            _ => Ok(V::Bytes(raw.to_vec())),
        },
    }
}

fn uuid(raw: &[u8]) -> Result<String, Box<dyn std::error::Error + Sync + Send>> {
    if raw.len() != 16 {
        return Err("uuid must be 16 bytes".into());
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// PostgreSQL's binary numeric: base-10000 digits with a weight and scale.
fn numeric(raw: &[u8]) -> Result<String, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<_>, _>>()?;
    let digit = |i: i32| -> u16 {
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&digit(0).to_string());
        for i in 1..=weight {
            out.push_str(&format!("{:04}", digit(i)));
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        out.push_str(&fraction);
    }
    Ok(out)
}

const POSTGRES_EPOCH_DAYS: i64 = 10_957; // 1970-01-01 to 2000-01-01
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => {
            let (y, m, d) = civil_from_days(d as i64 + POSTGRES_EPOCH_DAYS);
            format!("{y:04}-{m:02}-{d:02}")
        }
    }
}

fn timestamp(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        us => {
            let days = us.div_euclid(MICROS_PER_DAY);
            let (y, m, d) = civil_from_days(days + POSTGRES_EPOCH_DAYS);
            format!(
                "{y:04}-{m:02}-{d:02} {}",
                time_of_day(us.rem_euclid(MICROS_PER_DAY))
            )
        }
    }
}

fn time_of_day(micros: i64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let base = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 {
        base
    } else {
        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

/// ISO 8601 form ("P1Y2M3DT4H5M6.5S"), which PostgreSQL also accepts as input.
fn interval(raw: &[u8]) -> Result<String, Box<dyn std::error::Error + Sync + Send>> {
    if raw.len() != 16 {
        return Err("interval must be 16 bytes".into());
    }
    let micros = i64::from_be_bytes(raw[0..8].try_into()?);
    let days = i32::from_be_bytes(raw[8..12].try_into()?);
    let months = i32::from_be_bytes(raw[12..16].try_into()?);
    let mut out = format!("P{}Y{}M{}DT", months / 12, months % 12, days);
    let secs = micros / 1_000_000;
    let frac = (micros % 1_000_000).abs();
    out.push_str(&format!("{}H{}M{}", secs / 3600, secs / 60 % 60, secs % 60));
    if frac != 0 {
        out.push_str(&format!(".{}", format!("{frac:06}").trim_end_matches('0')));
    }
    out.push('S');
    Ok(out)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_renders_as_postgres_text() {
        // 12345.678: ndigits 3, weight 1, sign +, dscale 3, digits 1 2345 6780
        let raw = [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1A, 0x7C];
        assert_eq!(numeric(&raw).unwrap(), "12345.678");
        // -0.05: ndigits 1, weight -1, sign -, dscale 2, digits 500
        let raw = [0, 1, 0xFF, 0xFF, 0x40, 0, 0, 2, 0x01, 0xF4];
        assert_eq!(numeric(&raw).unwrap(), "-0.05");
        let raw = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(numeric(&raw).unwrap(), "0");
    }

    #[test]
    fn dates_and_times_render_in_iso_form() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(
            timestamp(86_400_000_000 + 1_500_000),
            "2000-01-02 00:00:01.5"
        );
        assert_eq!(time_of_day(3_723_000_000), "01:02:03");
    }

    #[test]
    fn params_are_checked_against_their_type() {
        let int = |n| Value {
            kind: Some(V::Int64(n)),
        };
        assert!(matches!(
            Param::bind(&int(7), &Type::INT4, 1),
            Ok(Param::I32(7))
        ));
        let err = Param::bind(&int(1 << 40), &Type::INT4, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter $2: 1099511627776 does not fit int4"
        );
        assert!(matches!(
            Param::bind(&int(7), &Type::NUMERIC, 1),
            Ok(Param::Text(_))
        ));
        let bytes = Value {
            kind: Some(V::Bytes(vec![1])),
        };
        assert!(Param::bind(&bytes, &Type::INT4, 1).is_err());
    }
}
