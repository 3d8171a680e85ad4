//! X's replay window rules, in one pure place: the simulator enforces them,
//! and the client and the watermark check them before they ask X.
//!
//! From X's documentation: `from_date`/`to_date` are `yyyymmddhhmm` UTC at
//! minute granularity; `from` is inclusive, within the last 24 hours and at
//! least 31 minutes ago; `to` is at least 10 minutes ago and after `from`;
//! the retired Account Activity endpoint's `to` was exclusive, while the
//! spec of its replacement (`POST /2/webhooks/replay`, the only replay
//! endpoint since 2026-03-25) calls it inclusive; X's behaviour is not
//! otherwise documented, so that is a setting. Where the text leaves a boundary open, the stricter reading
//! wins: exactly 24 h ago is *not* "within the last 24 hours".

use chrono::{DateTime, DurationRound, NaiveDateTime, TimeDelta, Utc};

pub const MAX_AGE: TimeDelta = TimeDelta::hours(24);
pub const MIN_FROM_AGE: TimeDelta = TimeDelta::minutes(31);
pub const MIN_TO_AGE: TimeDelta = TimeDelta::minutes(10);
/// X recommends windows of about two hours.
pub const RECOMMENDED_SPAN: TimeDelta = TimeDelta::hours(2);
const FORMAT: &str = "%Y%m%d%H%M";

/// A validated window, always half-open: `[from, to_exclusive)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to_exclusive: DateTime<Utc>,
}

impl Window {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to_exclusive
    }
}

/// Which bound semantics apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `true`: `to_date` names the last minute included.
    pub to_inclusive: bool,
}

impl Rules {
    /// `to_date` names the first minute *not* replayed: the stricter
    /// reading, which never asks X for less than intended.
    pub const TO_EXCLUSIVE: Rules = Rules {
        to_inclusive: false,
    };
}

/// Every way a window can break the rules. All are X's `QueryParamInvalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{field} `{value}` is not in the correct format (yyyymmddhhmm)")]
    Format { field: &'static str, value: String },
    #[error("from_date is in the future")]
    FromInFuture,
    #[error("to_date is in the future")]
    ToInFuture,
    #[error("from_date is older than 24 hours from the current time")]
    FromTooOld,
    #[error("from_date must be at least 31 minutes before the current time")]
    FromTooRecent,
    #[error("to_date must be at least 10 minutes before the current time")]
    ToTooRecent,
    #[error("to_date is older than 24 hours from the current time")]
    ToTooOld,
    #[error("from_date is more recent than to_date")]
    FromNotBeforeTo,
}

impl WindowError {
    /// X's reason name for every window error.
    pub fn reason(&self) -> &'static str {
        "QueryParamInvalid"
    }
}

pub fn parse_minute(field: &'static str, value: &str) -> Result<DateTime<Utc>, WindowError> {
    let bad = || WindowError::Format {
        field,
        value: value.to_owned(),
    };
    if value.len() != 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    NaiveDateTime::parse_from_str(value, FORMAT)
        .map(|t| t.and_utc())
        .map_err(|_| bad())
}

pub fn format_minute(t: DateTime<Utc>) -> String {
    t.format(FORMAT).to_string()
}

/// Validates `from`/`to` as X would at `now`.
pub fn validate(
    now: DateTime<Utc>,
    from: &str,
    to: &str,
    rules: Rules,
) -> Result<Window, WindowError> {
    let from = parse_minute("from_date", from)?;
    let to = parse_minute("to_date", to)?;
    if from > now {
        return Err(WindowError::FromInFuture);
    }
    if to > now {
        return Err(WindowError::ToInFuture);
    }
    if from <= now - MAX_AGE {
        return Err(WindowError::FromTooOld);
    }
    if to <= now - MAX_AGE {
        return Err(WindowError::ToTooOld);
    }
    if from > now - MIN_FROM_AGE {
        return Err(WindowError::FromTooRecent);
    }
    if to > now - MIN_TO_AGE {
        return Err(WindowError::ToTooRecent);
    }
    let to_exclusive = if rules.to_inclusive {
        to + TimeDelta::minutes(1)
    } else {
        to
    };
    if from >= to_exclusive {
        return Err(WindowError::FromNotBeforeTo);
    }
    Ok(Window { from, to_exclusive })
}

/// The whole minute `t` falls in: X's replay bounds have minute
/// granularity.
pub fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
}

/// The window an operator's `--from`/`--to` ask for, in X's minutes. Both
/// are rounded down: X checks the minute it receives (`to_date` at least 10
/// minutes ago), so the minute holding `to` is the newest it can be asked
/// for, and rounding up would turn a `to` just 10 minutes ago into a refused
/// request. With an inclusive `to_date` that minute is replayed whole; with
/// an exclusive one, seconds past the minute are not (callers say so).
pub fn operator_window(from: DateTime<Utc>, to: DateTime<Utc>, rules: Rules) -> Window {
    let to_minute = floor_minute(to);
    Window {
        from: floor_minute(from),
        to_exclusive: if rules.to_inclusive {
            to_minute + TimeDelta::minutes(1)
        } else {
            to_minute
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-25T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn an_operator_to_just_10_minutes_ago_is_a_minute_x_accepts() {
        let now: DateTime<Utc> = "2026-11-25T12:10:37Z".parse().unwrap();
        let from: DateTime<Utc> = "2026-11-25T11:00:20Z".parse().unwrap();
        for to in [
            "2026-11-25T12:00:37Z",
            "2026-11-25T12:00:36Z",
            "2026-11-25T12:00:00Z",
        ] {
            let to: DateTime<Utc> = to.parse().unwrap();
            for rules in [Rules::TO_EXCLUSIVE, Rules { to_inclusive: true }] {
                let window = operator_window(from, to, rules);
                assert_eq!(format_minute(window.from), "202611251100");
                let sent = if rules.to_inclusive {
                    window.to_exclusive - TimeDelta::minutes(1)
                } else {
                    window.to_exclusive
                };
                assert_eq!(format_minute(sent), "202611251200", "{to} {rules:?}");
                validate(
                    now,
                    &format_minute(window.from),
                    &format_minute(sent),
                    rules,
                )
                .unwrap_or_else(|e| panic!("{to} {rules:?}: {e}"));
                // An inclusive to_date replays the minute holding `to` whole.
                assert_eq!(window.contains(to), rules.to_inclusive);
            }
        }
    }

    /// `minutes` before `now()`, formatted.
    fn ago(minutes: i64) -> String {
        format_minute(now() - TimeDelta::minutes(minutes))
    }

    #[test]
    fn boundary_table() {
        use WindowError::*;
        let exclusive = Rules::TO_EXCLUSIVE;
        let inclusive = Rules { to_inclusive: true };
        type Case = (&'static str, String, String, Rules, Result<(), WindowError>);
        let cases: Vec<Case> = vec![
            (
                "a plain two-hour window",
                ago(150),
                ago(30),
                exclusive,
                Ok(()),
            ),
            (
                "from 23:59 ago",
                ago(23 * 60 + 59),
                ago(60),
                exclusive,
                Ok(()),
            ),
            (
                "from 24:00 ago",
                ago(24 * 60),
                ago(60),
                exclusive,
                Err(FromTooOld),
            ),
            (
                "from 24:01 ago",
                ago(24 * 60 + 1),
                ago(60),
                exclusive,
                Err(FromTooOld),
            ),
            ("from 31 min ago", ago(31), ago(10), exclusive, Ok(())),
            (
                "from 30 min ago",
                ago(30),
                ago(10),
                exclusive,
                Err(FromTooRecent),
            ),
            ("to 10 min ago", ago(60), ago(10), exclusive, Ok(())),
            ("to 9 min ago", ago(60), ago(9), exclusive, Err(ToTooRecent)),
            (
                "from == to, exclusive",
                ago(60),
                ago(60),
                exclusive,
                Err(FromNotBeforeTo),
            ),
            ("from == to, inclusive", ago(60), ago(60), inclusive, Ok(())),
            (
                "from after to",
                ago(40),
                ago(50),
                exclusive,
                Err(FromNotBeforeTo),
            ),
            (
                "from after to, inclusive",
                ago(40),
                ago(50),
                inclusive,
                Err(FromNotBeforeTo),
            ),
            (
                "from in the future",
                ago(-5),
                ago(10),
                exclusive,
                Err(FromInFuture),
            ),
            (
                "to in the future",
                ago(60),
                ago(-1),
                exclusive,
                Err(ToInFuture),
            ),
            (
                "to 24:00 ago",
                ago(24 * 60 - 1),
                ago(24 * 60),
                exclusive,
                Err(ToTooOld),
            ),
            (
                "a one-minute window at the 24 h edge",
                ago(24 * 60 - 1),
                ago(24 * 60 - 2),
                exclusive,
                Ok(()),
            ),
            (
                "format: too short",
                "20261125".into(),
                ago(10),
                exclusive,
                Err(Format {
                    field: "from_date",
                    value: "20261125".into(),
                }),
            ),
            (
                "format: dashes",
                "2026-11-25-1100".into(),
                ago(10),
                exclusive,
                Err(Format {
                    field: "from_date",
                    value: "2026-11-25-1100".into(),
                }),
            ),
            (
                "format: month 13",
                "202613251100".into(),
                ago(10),
                exclusive,
                Err(Format {
                    field: "from_date",
                    value: "202613251100".into(),
                }),
            ),
            (
                "format: minute 60",
                ago(60),
                "202611251160".into(),
                exclusive,
                Err(Format {
                    field: "to_date",
                    value: "202611251160".into(),
                }),
            ),
            (
                "format: empty",
                "".into(),
                ago(10),
                exclusive,
                Err(Format {
                    field: "from_date",
                    value: "".into(),
                }),
            ),
            (
                "format: RFC 3339",
                "2026-11-25T11:00:00Z".into(),
                ago(10),
                exclusive,
                Err(Format {
                    field: "from_date",
                    value: "2026-11-25T11:00:00Z".into(),
                }),
            ),
            (
                "format: signed digits",
                "+20261125110".into(),
                ago(10),
                exclusive,
                Err(Format {
                    field: "from_date",
                    value: "+20261125110".into(),
                }),
            ),
        ];
        assert!(cases.len() >= 20);
        for (name, from, to, rules, expected) in cases {
            let got = validate(now(), &from, &to, rules).map(|_| ());
            assert_eq!(got, expected, "{name}: from={from} to={to}");
        }
    }

    #[test]
    fn seconds_of_now_count() {
        // At 12:00:30, 11:29 is 31.5 min ago (fine), 11:30 is 30.5 (too recent).
        let now = now() + TimeDelta::seconds(30);
        assert!(validate(now, "202611251129", "202611251140", Rules::TO_EXCLUSIVE).is_ok());
        assert_eq!(
            validate(now, "202611251130", "202611251140", Rules::TO_EXCLUSIVE),
            Err(WindowError::FromTooRecent)
        );
    }

    #[test]
    fn inclusive_to_extends_the_window_by_one_minute() {
        let w = validate(now(), &ago(60), &ago(20), Rules { to_inclusive: true }).unwrap();
        assert_eq!(w.to_exclusive, now() - TimeDelta::minutes(19));
        assert!(w.contains(now() - TimeDelta::minutes(20)));
        let w = validate(now(), &ago(60), &ago(20), Rules::TO_EXCLUSIVE).unwrap();
        assert!(!w.contains(now() - TimeDelta::minutes(20)));
        assert!(w.contains(now() - TimeDelta::minutes(60)));
    }
}
