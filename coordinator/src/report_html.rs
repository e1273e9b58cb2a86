//! `flotilla report --format html`: the report as one self-contained page (inline CSS,
//! JavaScript and SVG; no external assets), for an auditor to open or a CI to archive.
//!
//! The table sorts by clicking a header (status sorts worst first, age oldest first;
//! a second click reverses); `#sort=COLUMN` or `#sort=-COLUMN` in the address picks the
//! initial order, so a link can carry it. Each host has a freshness strip over the
//! report's history window: one cell per UTC day, green when the host was fresh at the
//! end of that day (last successful backup no older than `max_age`), red when it was
//! stale, grey before its first backup. Every text from the catalog is escaped.

use crate::report::{FleetReport, HostRow, HostStatus};
use std::fmt::Write as _;

const DAY: i64 = 86_400;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn utc(t: i64) -> String {
    if t <= 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn day(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// A duration for people: 90s, 45m, 30h, 12d.
pub fn age_text(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * DAY => format!("{}h", s / 3600),
        s => format!("{}d", s / DAY),
    }
}

/// Background colour per status, darkest for the worst.
fn colour(status: HostStatus) -> &'static str {
    match status {
        HostStatus::Unprotected => "#7b1fa2",
        HostStatus::Never => "#b71c1c",
        HostStatus::Stale => "#d32f2f",
        HostStatus::Failing => "#e65100",
        HostStatus::Offline => "#616161",
        HostStatus::Fresh => "#2e7d32",
    }
}

fn rank(status: HostStatus) -> usize {
    HostStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or(0)
}

/// What one day of the freshness strip shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayState {
    /// No successful backup up to the end of that day.
    NoBackup,
    /// The last backup at the end of the day was within `max_age` (or, with no
    /// `max_age`, there was one).
    Fresh,
    /// The last backup at the end of the day was older than `max_age`.
    Stale,
}

/// One cell of the strip: the day's start, its state, the backups that ended in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub start: i64,
    pub state: DayState,
    pub backups: usize,
}

/// The per-day freshness of one host over the `days` UTC days up to `now` (oldest
/// first; the last one ends at `now`). `backups` are the row's `recent_backups`: end
/// times oldest first, starting with the last backup before the window.
pub fn freshness_days(backups: &[i64], max_age: Option<u64>, now: i64, days: u32) -> Vec<Day> {
    let today = now.div_euclid(DAY) * DAY;
    (0..i64::from(days))
        .rev()
        .map(|back| {
            let start = today - back * DAY;
            let end = (start + DAY - 1).min(now);
            let last = backups.iter().copied().filter(|t| *t <= end).max();
            let state = match (last, max_age) {
                (None, _) => DayState::NoBackup,
                (Some(_), None) => DayState::Fresh,
                (Some(t), Some(max)) if end - t <= max as i64 => DayState::Fresh,
                (Some(_), Some(_)) => DayState::Stale,
            };
            let backups = backups
                .iter()
                .filter(|t| **t >= start && **t <= end)
                .count();
            Day {
                start,
                state,
                backups,
            }
        })
        .collect()
}

/// Width of one day in the strip, in pixels (one of them a gap).
const STEP: usize = 9;

/// Drawn once per page: the day separators every strip lays over its runs.
const DAY_GRID: &str = "<svg width=\"0\" height=\"0\" style=\"position:absolute\"><defs>\
<pattern id=\"day-grid\" width=\"9\" height=\"18\" patternUnits=\"userSpaceOnUse\">\
<rect x=\"8\" width=\"1\" height=\"18\" fill=\"#fff\"/></pattern></defs></svg>";

/// The strip as inline SVG: one rectangle per run of days in the same state (with a
/// tooltip naming the dates), the day grid over it, and a dark mark under each day a
/// backup ended. A few hundred bytes per host, so a 10,000-host page stays small.
fn strip(row: &HostRow, now: i64, days: u32) -> String {
    let cells = freshness_days(&row.recent_backups, row.max_age_secs, now, days);
    let fresh = cells.iter().filter(|d| d.state == DayState::Fresh).count();
    let width = cells.len() * STEP;
    let mut svg = format!(
        "<svg class=\"strip\" width=\"{width}\" height=\"18\" role=\"img\" \
         aria-label=\"fresh on {fresh} of {} days\">",
        cells.len()
    );
    let mut start = 0;
    while start < cells.len() {
        let state = cells[start].state;
        let end = cells[start..]
            .iter()
            .position(|d| d.state != state)
            .map_or(cells.len(), |n| start + n);
        let (fill, word) = match state {
            DayState::NoBackup => ("#cfd8dc", "no backup yet"),
            DayState::Fresh => ("#43a047", "fresh"),
            DayState::Stale => ("#e53935", "stale"),
        };
        let backups: usize = cells[start..end].iter().map(|d| d.backups).sum();
        let first = day(cells[start].start);
        let dates = if end - start == 1 {
            first
        } else {
            format!("{first} to {}", day(cells[end - 1].start))
        };
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"1\" width=\"{}\" height=\"16\" fill=\"{fill}\" \
             data-state=\"{word}\" data-days=\"{}\"><title>{dates}: {word} ({} day(s), {backups} \
             backup(s))</title></rect>",
            start * STEP,
            (end - start) * STEP,
            end - start,
            end - start
        );
        start = end;
    }
    let _ = write!(
        svg,
        "<rect width=\"{width}\" height=\"18\" fill=\"url(#day-grid)\"/>"
    );
    let marks: String = cells
        .iter()
        .enumerate()
        .filter(|(_, d)| d.backups > 0)
        .map(|(i, _)| format!("M{} 13h{}v3h-{}z", i * STEP + 1, STEP - 3, STEP - 3))
        .collect();
    if !marks.is_empty() {
        let _ = write!(svg, "<path d=\"{marks}\" fill=\"#1b5e20\"/>");
    }
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = "body{font:13px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
margin:24px;color:#212121;background:#fafafa}h1{font-size:22px;margin:0 0 4px}\
.meta{color:#616161;margin-bottom:16px}.cards{display:flex;gap:10px;flex-wrap:wrap;margin-bottom:18px}\
.card{border-radius:6px;padding:8px 14px;color:#fff;min-width:90px}.card b{display:block;font-size:22px}\
.card.total{background:#37474f}table{border-collapse:collapse;background:#fff;width:100%}\
th,td{border-bottom:1px solid #e0e0e0;padding:4px 6px;text-align:left;vertical-align:top;white-space:nowrap}\
th{background:#eceff1;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}\
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}\
td.num{text-align:right;white-space:nowrap}.status{color:#fff;border-radius:4px;padding:1px 7px;\
font-weight:600}.err{color:#b71c1c;max-width:420px;white-space:normal;overflow-wrap:anywhere}.small{color:#757575;font-size:12px}\
.legend span{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 12px}\
td.wrap{white-space:normal;min-width:180px}h2{font-size:17px;margin:24px 0 8px}.ok{color:#2e7d32}.bad{color:#b71c1c}";

// Sorts by the clicked column's data-sort values (numbers when both parse); honours
// #sort=COL / #sort=-COL on load.
const SCRIPT: &str = r#"(function(){
var table=document.getElementById('hosts');var heads=table.tHead.rows[0].cells;
function sortBy(col,desc){var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
var idx=-1;for(var i=0;i<heads.length;i++){if(heads[i].dataset.col===col){idx=i;}heads[i].removeAttribute('aria-sort');}
if(idx<0)return;rows.sort(function(a,b){var x=a.cells[idx].dataset.sort,y=b.cells[idx].dataset.sort;
var nx=parseFloat(x),ny=parseFloat(y);var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
if(c===0){c=a.dataset.order-b.dataset.order;return c;}return desc?-c:c;});
rows.forEach(function(r){body.appendChild(r);});heads[idx].setAttribute('aria-sort',desc?'descending':'ascending');
table.dataset.sorted=(desc?'-':'')+col;}
for(var i=0;i<heads.length;i++){heads[i].addEventListener('click',function(){var col=this.dataset.col;
var desc=this.getAttribute('aria-sort')==='ascending';sortBy(col,desc);history.replaceState(null,'','#sort='+(desc?'-':'')+col);});}
var m=/sort=(-?)([a-z_]+)/.exec(location.hash);if(m){sortBy(m[2],m[1]==='-');}
})();"#;

/// The whole page.
pub fn to_html(report: &FleetReport) -> String {
    let days = report.history_days;
    let now = report.generated_at;
    let mut h = String::with_capacity(4096 + report.hosts.len() * (1200 + days as usize * 160));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Flotilla backup freshness report {}</title><style>{STYLE}</style></head><body>\n\
         {DAY_GRID}<h1>Backup freshness</h1><div class=\"meta\">Generated {} · {} host(s) · offline after {} · \
         schema {}</div>\n<div class=\"cards\" id=\"summary\">",
        escape(&utc(now)),
        escape(&utc(now)),
        report.summary.hosts,
        age_text(report.offline_after_secs),
        report.schema_version
    );
    let _ = write!(
        h,
        "<div class=\"card total\"><b>{:.0}%</b>of hosts fresh</div>",
        report.summary.fresh_share * 100.0
    );
    for st in HostStatus::ALL {
        let n = report
            .summary
            .by_status
            .get(st.as_str())
            .copied()
            .unwrap_or(0);
        let _ = write!(
            h,
            "<div class=\"card\" data-status=\"{0}\" style=\"background:{1}\"><b>{n}</b>{0}</div>",
            st.as_str(),
            colour(st)
        );
    }
    h.push_str("</div>\n");
    if days > 0 {
        let _ = writeln!(
            h,
            "<div class=\"legend small\">Freshness, last {days} days (UTC, one cell per day, as \
             of the end of the day):<span style=\"background:#43a047\"></span>fresh\
             <span style=\"background:#e53935\"></span>stale (older than max_age)\
             <span style=\"background:#cfd8dc\"></span>no backup yet; a dark mark: a backup ended that day.</div>"
        );
    }
    let columns = [
        ("host", "Host"),
        ("status", "Status"),
        ("policy", "Policy · max age"),
        ("age", "Last backup"),
        ("chain", "Chain"),
        ("history", "Freshness"),
        ("restore", "Last verified restore"),
        ("agent", "Agent · policy rev · seen"),
        ("failure", "Last failure"),
    ];
    h.push_str("<table id=\"hosts\"><thead><tr>");
    for (col, title) in columns {
        let _ = write!(h, "<th data-col=\"{col}\">{title}</th>");
    }
    h.push_str("</tr></thead><tbody>\n");
    for (order, row) in report.hosts.iter().enumerate() {
        host_row(&mut h, order, row, now, days);
    }
    h.push_str("</tbody></table>\n");
    if report.hosts.is_empty() {
        h.push_str("<p>No hosts match.</p>\n");
    }
    if let Some(check) = &report.storage_check {
        storage_section(&mut h, check);
    }
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body></html>\n");
    h
}

fn host_row(h: &mut String, order: usize, row: &HostRow, now: i64, days: u32) {
    let f = &row.facts;
    let small = |text: &str| format!("<div class=\"small\">{text}</div>");
    let cell = |h: &mut String, sort: &str, class: &str, body: &str| {
        let class = if class.is_empty() {
            String::new()
        } else {
            format!(" class=\"{class}\"")
        };
        let _ = write!(h, "<td data-sort=\"{}\"{class}>{body}</td>", escape(sort));
    };
    let _ = write!(
        h,
        "<tr data-order=\"{order}\" data-host=\"{}\" data-status=\"{}\">",
        escape(&row.host_id),
        row.status.as_str()
    );
    let mut host = escape(&row.host_id);
    if !row.hostname.is_empty() && row.hostname != row.host_id {
        host += &small(&escape(&row.hostname));
    }
    if !row.labels.is_empty() {
        let labels: Vec<String> = row.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        host += &small(&escape(&labels.join(", ")));
    }
    cell(h, &row.host_id, "", &host);
    cell(
        h,
        &rank(row.status).to_string(),
        "",
        &format!(
            "<span class=\"status\" style=\"background:{}\">{}</span>",
            colour(row.status),
            row.status.as_str()
        ),
    );
    let mut policy = match &row.policy {
        Some(p) => format!(
            "{} · {}",
            escape(p),
            row.max_age_secs
                .map_or("no max age".into(), |s| age_text(s as i64))
        ),
        None => "-".into(),
    };
    if !row.encrypt_to.is_empty() {
        policy += &small(&format!(
            "encrypted to {}",
            escape(&row.encrypt_to.join(", "))
        ));
    }
    cell(h, row.policy.as_deref().unwrap_or(""), "", &policy);
    // Never backed up sorts as the oldest.
    let age_sort = row.age_secs.unwrap_or(i64::MAX / 4);
    let age = match row.age_secs {
        Some(age) => format!(
            "<b>{} ago</b>{}",
            age_text(age),
            small(&utc(f.last_success_at))
        ),
        None => "<b>never</b>".into(),
    };
    cell(h, &age_sort.to_string(), "", &age);
    let chain = if f.last_full_at > 0 {
        format!(
            "full + {} incr.{}",
            f.chain_length.saturating_sub(1),
            small(&format!("since {}", day(f.last_full_at)))
        )
    } else {
        "-".into()
    };
    cell(h, &f.chain_length.to_string(), "", &chain);
    let fresh_days = freshness_days(&row.recent_backups, row.max_age_secs, now, days)
        .iter()
        .filter(|d| d.state == DayState::Fresh)
        .count();
    let strip = if days > 0 {
        strip(row, now, days)
    } else {
        "-".into()
    };
    cell(h, &fresh_days.to_string(), "", &strip);
    let restore = if f.last_verified_restore_at > 0 {
        format!(
            "{}{}",
            utc(f.last_verified_restore_at),
            if f.last_verified_restore_drill {
                small("drill")
            } else {
                String::new()
            }
        )
    } else {
        "-".into()
    };
    cell(h, &f.last_verified_restore_at.to_string(), "", &restore);
    let revision = if row.policy_revision_applied == row.policy_revision_wanted {
        format!("rev {}", row.policy_revision_applied)
    } else {
        format!(
            "<span class=\"bad\">rev {} of {}</span>",
            row.policy_revision_applied, row.policy_revision_wanted
        )
    };
    let seen = if row.connected {
        "connected".into()
    } else {
        format!("seen {}", utc(row.last_seen))
    };
    cell(
        h,
        &row.agent_version,
        "",
        &format!(
            "{} · {revision}{}",
            if row.agent_version.is_empty() {
                "-".into()
            } else {
                escape(&row.agent_version)
            },
            small(&seen)
        ),
    );
    let failure = if f.consecutive_failures > 0 {
        format!(
            "{} ×{}<div class=\"err\">{}</div>",
            utc(f.last_failure_at),
            f.consecutive_failures,
            escape(&f.last_error)
        )
    } else {
        "-".into()
    };
    cell(h, &f.consecutive_failures.to_string(), "wrap", &failure);
    h.push_str("</tr>\n");
}

fn storage_section(h: &mut String, check: &crate::report::StorageCheck) {
    let _ = write!(
        h,
        "<h2 id=\"storage\">Storage check</h2><p>{} host(s) checked at {}: <b class=\"{}\">{} \
         disagree</b>.</p>",
        check.hosts_checked,
        utc(check.checked_at),
        if check.hosts_differing == 0 {
            "ok"
        } else {
            "bad"
        },
        check.hosts_differing
    );
    h.push_str(
        "<table id=\"storage-check\"><thead><tr><th>Host</th><th>Destination</th><th>Catalog sets</th>\
         <th>Stored sets</th><th>Problems</th></tr></thead><tbody>\n",
    );
    for c in &check.hosts {
        let mut problems = String::new();
        if let Some(e) = &c.error {
            let _ = write!(
                problems,
                "<div class=\"err\">listing failed: {}</div>",
                escape(e)
            );
        }
        let listed = (c.missing_from_storage.iter().map(|m| (m, " class=\"err\"")))
            .chain(c.missing_from_catalog.iter().map(|m| (m, "")));
        for (m, class) in listed {
            let _ = write!(
                problems,
                "<div{class}>{} {}: {}</div>",
                m.kind,
                utc(m.end_time),
                escape(&m.problem)
            );
        }
        if !c.note.is_empty() {
            let _ = write!(problems, "<div class=\"small\">{}</div>", escape(&c.note));
        }
        if problems.is_empty() {
            problems = "<span class=\"ok\">agree</span>".into();
        }
        let _ = writeln!(
            h,
            "<tr data-host=\"{}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{problems}</td></tr>",
            escape(&c.host_id),
            escape(&c.host_id),
            escape(&c.destination),
            c.catalog_sets,
            c.storage_sets
        );
    }
    h.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn freshness_days_follow_max_age() {
        let now = 10 * DAY + 12 * 3600; // noon on day 10
        // A backup at 06:00 on day 5, then nothing; max_age 2 days.
        let days = freshness_days(&[5 * DAY + 6 * 3600], Some(2 * DAY as u64), now, 8);
        let states: Vec<DayState> = days.iter().map(|d| d.state).collect();
        use DayState::*;
        // Days 3..=10: none, none, fresh (day 5), fresh (6), stale from day 7 (end of day 7
        // is 2 days + 18 h after the backup), stale, stale, stale.
        assert_eq!(
            states,
            [NoBackup, NoBackup, Fresh, Fresh, Stale, Stale, Stale, Stale]
        );
        assert_eq!(days[2].backups, 1);
        assert_eq!(days[2].start, 5 * DAY);
        assert!(
            days.iter()
                .enumerate()
                .all(|(i, d)| i == 2 || d.backups == 0)
        );
        // Without max_age any backup counts as fresh.
        let days = freshness_days(&[5 * DAY], None, now, 3);
        assert!(days.iter().all(|d| d.state == Fresh));
        // A backup before the window (day 2, 00:00) keeps the first days fresh: the end
        // of day 4 is 3 days minus a second after it.
        let days = freshness_days(&[2 * DAY], Some(3 * DAY as u64), now, 8);
        assert_eq!(days[0].state, Fresh);
        assert_eq!(days[1].state, Fresh);
        assert_eq!(days[2].state, Stale);
    }
}
