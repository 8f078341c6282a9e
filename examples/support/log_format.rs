//! The examples' log lines: `tracing_subscriber`'s default format for every event, and the
//! same look for access lines (`portcullis::access`, one per request) written more
//! directly.
//!
//! Why: with the default format, logging added 17 300 instructions to a hello request that
//! costs 17 100 unlogged, with this one 9 200 (`bash benches/instructions.sh` on the
//! `hello` example): the default makes a styled write per field name and `=` (even with
//! colours off) and formats the date from scratch for every line. Here a field is one
//! `write!`, and the date and time up to the second are formatted once per second. The
//! line reads as the default one does:
//!
//! ```text
//! 2026-11-30T23:18:40.760311Z  INFO conn{peer=127.0.0.1:5555 protocol=HTTP/1.1}: portcullis::access: client=127.0.0.1:5555 protocol=HTTP/1.1 method=GET path="/" status=200 bytes=14 duration_us=25 outcome="complete"
//! ```

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The access lines' target.
const ACCESS: &str = "portcullis::access";

/// The event format of [`init_logging`](super::init_logging).
pub struct LineFormat {
    full: Format,
    ansi: bool,
}

impl LineFormat {
    pub fn new(ansi: bool) -> LineFormat {
        LineFormat {
            full: Format::default().with_ansi(ansi),
            ansi,
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Colours are the default format's business (a terminal, not a log file).
        if self.ansi || event.metadata().target() != ACCESS {
            return self.full.format_event(ctx, writer, event);
        }
        write_time(&mut writer)?;
        write!(writer, " {:>5} ", event.metadata().level())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        writer.write_str(ACCESS)?;
        writer.write_char(':')?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// ` name=value` per field: strings quoted and escaped (`Debug`), numbers and the rest as
/// the default format writes them.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = write!(self.writer, " {}={value:?}", field.name());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = write!(self.writer, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = write!(self.writer, " {}={value:?}", field.name());
        }
    }
}

thread_local! {
    /// The second last formatted on this thread, and its text up to the seconds
    /// (`2026-11-30T23:18:40`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The time as the default format writes it (RFC 3339, microseconds, UTC), the part up to
/// the second formatted once per second and thread.
fn write_time(writer: &mut Writer<'_>) -> fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != now.as_secs() {
            let (date, time) = (now.as_secs() / 86_400, now.as_secs() % 86_400);
            let (year, month, day) = civil_date(date);
            second.1.clear();
            write!(
                second.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                time / 3600,
                time / 60 % 60,
                time % 60
            )?;
            second.0 = now.as_secs();
        }
        write!(writer, "{}.{:06}Z", second.1, now.subsec_micros())
    })
}

/// Year, month and day of the `days`th day since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
