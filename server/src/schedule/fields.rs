//! Field-by-field checks of a cron expression as a user typed it, before
//! croner reads it: an error names the field at fault ("hour: 24 is out of
//! range 0–23"), and what croner would accept silently is refused — an
//! empty list element (`1,,3`) or a step larger than its field (`*/61`,
//! which croner reads as "at 0" only). Applied to input (the API and the
//! preview), not to stored jobs: a job stored before stays readable.
//!
//! Names (`JAN`, `MON`) and croner's extensions (`L`, `W`, `#`, `?`) are
//! left to croner.

/// One cron field: its name and the values it takes.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
}

const fn field(name: &'static str, min: u32, max: u32) -> Field {
    Field { name, min, max }
}

const SECOND: Field = field("second", 0, 59);
const MINUTE: Field = field("minute", 0, 59);
const HOUR: Field = field("hour", 0, 23);
const DAY_OF_MONTH: Field = field("day-of-month", 1, 31);
const MONTH: Field = field("month", 1, 12);
// 0 and 7 are both Sunday.
const DAY_OF_WEEK: Field = field("day-of-week", 0, 7);

/// Checks each field of a 5- or 6-field cron expression. Other forms
/// (macros, a wrong field count) are left to the parser's own errors.
pub(super) fn check(expr: &str) -> Result<(), String> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let fields: &[Field] = match parts.len() {
        5 => &[MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        6 => &[SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        _ => return Ok(()),
    };
    for (text, field) in parts.iter().zip(fields) {
        check_field(text, field).map_err(|why| format!("{}: {why}", field.name))?;
    }
    Ok(())
}

fn check_field(text: &str, field: &Field) -> Result<(), String> {
    for element in text.split(',') {
        if element.is_empty() {
            return Err(format!("{text:?} has an empty list element"));
        }
        let (base, step) = match element.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (element, None),
        };
        if let Some(step) = step {
            let n: u32 = step
                .parse()
                .map_err(|_| format!("step {step:?} in {element:?} is not a number"))?;
            if n == 0 || n > field.max {
                return Err(format!(
                    "step {n} in {element:?} must be from 1 to {}",
                    field.max
                ));
            }
        }
        let (low, high) = match base.split_once('-') {
            Some((low, high)) => (low, Some(high)),
            None => (base, None),
        };
        for value in std::iter::once(low).chain(high) {
            // Only plain numbers here: `*`, names and croner's extensions
            // are croner's to judge.
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                let in_range = value
                    .parse::<u32>()
                    .is_ok_and(|v| (field.min..=field.max).contains(&v));
                if !in_range {
                    return Err(format!(
                        "{value} is out of range {}–{}",
                        field.min, field.max
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn what_croner_would_take_silently_is_refused_and_named() {
        for (expr, why) in [
            (
                "*/61 * * * *",
                "minute: step 61 in \"*/61\" must be from 1 to 59",
            ),
            (
                "*/0 * * * *",
                "minute: step 0 in \"*/0\" must be from 1 to 59",
            ),
            (
                "1,2,,3 * * * *",
                "minute: \"1,2,,3\" has an empty list element",
            ),
            ("0 24 * * *", "hour: 24 is out of range 0–23"),
            ("0 0 0 * *", "day-of-month: 0 is out of range 1–31"),
            ("0 0 1 13 *", "month: 13 is out of range 1–12"),
            ("0 0 * * 8", "day-of-week: 8 is out of range 0–7"),
            ("60 0 0 * * *", "second: 60 is out of range 0–59"),
            ("0 0 10-32 * *", "day-of-month: 32 is out of range 1–31"),
            ("0 */x * * *", "hour: step \"x\" in \"*/x\" is not a number"),
            (
                "0 0 1, * *",
                "day-of-month: \"1,\" has an empty list element",
            ),
        ] {
            assert_eq!(check(expr), Err(why.to_string()), "{expr}");
        }
    }

    #[test]
    fn what_cron_users_write_passes() {
        for expr in [
            "* * * * *",
            "*/5 9-17 * * MON-FRI",
            "0 30 2 * * *",
            "10-50/10 * * * *",
            "0 0 1,15 JAN,JUL *",
            "0 0 L * *",
            "0 0 ? * 5#2",
            "0 0 * * 0,7",
            "*/59 */23 */31 */12 */7",
            "@daily",
            "a b c",
        ] {
            assert_eq!(check(expr), Ok(()), "{expr}");
        }
    }
}
