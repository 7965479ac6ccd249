//! JUnit XML for CI systems (Jenkins, GitLab, GitHub test reporters): one test case per budget
//! result, a failure element for each budget exceeded.
//!
//! The document is valid against both common schemas: Jenkins' junit-10.xsd (xunit plugin) and,
//! when written with [`junit_xml_stamped`], the stricter Apache Ant schema (windyroad
//! JUnit.xsd), which additionally requires `timestamp` and `hostname` on the suite. To satisfy
//! the Ant schema `<testsuites>` carries no attributes (it declares none), each suite has `id`,
//! `package`, `<properties/>`, `<system-out>` and `<system-err/>`, each test case a `time`, and
//! each failure a `type`.

use std::fmt::Write as _;

use crate::model::{BudgetResult, Verdict};
use crate::sanitize;

/// Class name of every budget test case, so CI groups them together.
pub const CLASSNAME: &str = "stallscope.budget";
/// `type` of a failure: a budget exceeded.
pub const FAILURE_TYPE: &str = "stallscope.BudgetExceeded";

/// The verdict as a JUnit XML document with one `<testsuite>` named `suite_name`;
/// `duration_s` is how long the recording ran. With no budgets, one passing test case named
/// "no budgets" is emitted so that CI shows the run happened.
pub fn junit_xml(verdict: &Verdict, suite_name: &str, duration_s: f64) -> String {
    render(verdict, suite_name, duration_s, None)
}

/// As [`junit_xml`], plus the suite's `timestamp` (when recording started, seconds since the
/// Unix epoch, written in UTC as the Ant schema wants: `YYYY-MM-DDTHH:MM:SS`) and `hostname`
/// ("localhost" when empty, as that schema asks).
pub fn junit_xml_stamped(
    verdict: &Verdict,
    suite_name: &str,
    duration_s: f64,
    started_unix_s: u64,
    hostname: &str,
) -> String {
    let hostname = match hostname.trim() {
        "" => "localhost",
        name => name,
    };
    render(
        verdict,
        suite_name,
        duration_s,
        Some((utc_timestamp(started_unix_s), hostname)),
    )
}

fn render(
    verdict: &Verdict,
    suite_name: &str,
    duration_s: f64,
    stamp: Option<(String, &str)>,
) -> String {
    let failures = verdict.budgets.iter().filter(|r| !r.passed).count();
    let tests = verdict.budgets.len().max(1);
    // Both schemas require a non-empty suite name.
    let suite_name = match suite_name.trim() {
        "" => "stallscope",
        name => name,
    };
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    let _ = write!(
        xml,
        "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" \
         skipped=\"0\" time=\"{}\"",
        sanitize::xml_attribute(suite_name),
        seconds(duration_s),
    );
    if let Some((timestamp, hostname)) = stamp {
        let _ = write!(
            xml,
            " timestamp=\"{timestamp}\" hostname=\"{}\"",
            sanitize::xml_attribute(hostname)
        );
    }
    xml.push_str(" id=\"0\" package=\"stallscope\">\n    <properties/>\n");
    if verdict.budgets.is_empty() {
        let _ = writeln!(
            xml,
            "    <testcase classname=\"{CLASSNAME}\" name=\"no budgets\" time=\"0\"/>"
        );
    }
    for result in &verdict.budgets {
        testcase(&mut xml, result);
    }
    // The verdict as text too, for CI views that show a suite's output but not its cases.
    let mut out = String::new();
    for result in &verdict.budgets {
        let _ = writeln!(out, "{result}");
    }
    if verdict.budgets.is_empty() {
        out.push_str("no budgets were given (--fail-on)\n");
    }
    let _ = write!(
        xml,
        "    <system-out>{}</system-out>\n    <system-err/>\n  </testsuite>\n</testsuites>\n",
        sanitize::xml(&out)
    );
    xml
}

fn testcase(xml: &mut String, result: &BudgetResult) {
    let name = format!("{} ({})", result.budget, result.subject);
    let _ = write!(
        xml,
        "    <testcase classname=\"{CLASSNAME}\" name=\"{}\" time=\"0\"",
        sanitize::xml_attribute(&name)
    );
    if result.passed {
        xml.push_str("/>\n");
    } else {
        let message = result.describe();
        let _ = write!(
            xml,
            ">\n      <failure message=\"{}\" type=\"{FAILURE_TYPE}\">{}</failure>\n    \
             </testcase>\n",
            sanitize::xml_attribute(&message),
            sanitize::xml(&message)
        );
    }
}

/// Seconds with millisecond precision; negative or non-finite input (a clock oddity) becomes 0
/// rather than an attribute no schema accepts.
fn seconds(duration_s: f64) -> String {
    if duration_s.is_finite() && duration_s > 0.0 {
        format!("{duration_s:.3}")
    } else {
        "0.000".to_string()
    }
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC, without a zone, as the Ant schema's timestamp pattern requires.
fn utc_timestamp(unix_s: u64) -> String {
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days`, restricted to dates on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitize::is_xml_char;

    fn result(budget: &str, subject: &str, passed: bool) -> BudgetResult {
        BudgetResult {
            budget: budget.into(),
            measured: "longest stall".into(),
            subject: subject.into(),
            limit: "200.0 ms".into(),
            actual: "212.3 ms".into(),
            passed,
        }
    }

    fn verdict(budgets: Vec<BudgetResult>) -> Verdict {
        let passed = budgets.iter().all(|r| r.passed);
        Verdict { budgets, passed }
    }

    /// A minimal XML well-formedness check for these documents: one root, balanced tags,
    /// quoted attributes without duplicates, no raw `<` or `&` outside markup and references,
    /// only the five predefined entities and numeric references. Returns the elements in
    /// document order with their attributes (unescaped) and text.
    #[derive(Debug, Default)]
    struct Element {
        name: String,
        attributes: Vec<(String, String)>,
        text: String,
        depth: usize,
    }

    impl Element {
        fn attr(&self, name: &str) -> Option<&str> {
            self.attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn unescape(text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            out.push_str(&rest[..at]);
            let end = rest[at..]
                .find(';')
                .ok_or_else(|| format!("unterminated reference in {text:?}"))?;
            let entity = &rest[at + 1..at + end];
            match entity {
                "amp" => out.push('&'),
                "lt" => out.push('<'),
                "gt" => out.push('>'),
                "quot" => out.push('"'),
                "apos" => out.push('\''),
                _ => {
                    let code = entity
                        .strip_prefix('#')
                        .and_then(|n| n.parse::<u32>().ok())
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("unknown entity &{entity};"))?;
                    out.push(code);
                }
            }
            rest = &rest[at + end + 1..];
        }
        out.push_str(rest);
        if out.chars().any(|c| !is_xml_char(c)) {
            return Err(format!("character not allowed in XML in {text:?}"));
        }
        Ok(out)
    }

    fn parse_xml(xml: &str) -> Result<Vec<Element>, String> {
        let body = xml
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
            .ok_or("missing XML declaration")?;
        let mut elements: Vec<Element> = Vec::new();
        let mut open: Vec<(String, usize)> = Vec::new();
        let mut roots = 0;
        let mut rest = body;
        loop {
            let at = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..at];
            if text.contains('>') {
                return Err(format!("raw '>' in text {text:?}"));
            }
            let text = unescape(text)?;
            match open.last() {
                Some(&(_, index)) => elements[index].text.push_str(&text),
                None if !text.trim().is_empty() => return Err("text outside the root".into()),
                None => {}
            }
            if at == rest.len() {
                break;
            }
            let end = rest[at..].find('>').ok_or("unterminated tag")? + at;
            let tag = &rest[at + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let (expected, _) = open.pop().ok_or("close without open")?;
                if expected != name {
                    return Err(format!("</{name}> closes <{expected}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
            let name = &tag[..name_end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("bad element name {name:?}"));
            }
            let mut element = Element {
                name: name.to_string(),
                depth: open.len(),
                ..Element::default()
            };
            let mut attrs = tag[name_end..].trim_start();
            while !attrs.is_empty() {
                let eq = attrs.find('=').ok_or("attribute without value")?;
                let attr_name = attrs[..eq].to_string();
                let value = attrs[eq + 1..]
                    .strip_prefix('"')
                    .ok_or("unquoted attribute")?;
                let close = value.find('"').ok_or("unterminated attribute")?;
                let raw = &value[..close];
                if raw.contains('<') {
                    return Err(format!("raw '<' in attribute {raw:?}"));
                }
                if element.attr(&attr_name).is_some() {
                    return Err(format!("duplicate attribute {attr_name}"));
                }
                element.attributes.push((attr_name, unescape(raw)?));
                attrs = value[close + 1..].trim_start();
            }
            if open.is_empty() {
                roots += 1;
            }
            elements.push(element);
            if !self_closing {
                open.push((name.to_string(), elements.len() - 1));
            }
        }
        if !open.is_empty() {
            return Err(format!("unclosed {open:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(elements)
    }

    fn parse_ok(xml: &str) -> Vec<Element> {
        parse_xml(xml).unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"))
    }

    fn named<'a>(elements: &'a [Element], name: &str) -> Vec<&'a Element> {
        elements.iter().filter(|e| e.name == name).collect()
    }

    #[test]
    fn one_case_per_result_with_failures_counted() {
        let xml = junit_xml(
            &verdict(vec![
                result("max=200ms", "all", false),
                result("count=0", "all", true),
                result("process:p99=50ms", "pid 12", false),
            ]),
            "stallscope record",
            12.3456,
        );
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>"));
        let elements = parse_ok(&xml);
        assert_eq!(elements[0].name, "testsuites");
        assert!(elements[0].attributes.is_empty());
        let suites = named(&elements, "testsuite");
        assert_eq!(suites.len(), 1);
        let suite = suites[0];
        assert_eq!(suite.depth, 1);
        assert_eq!(suite.attr("name"), Some("stallscope record"));
        assert_eq!(suite.attr("tests"), Some("3"));
        assert_eq!(suite.attr("failures"), Some("2"));
        assert_eq!(suite.attr("errors"), Some("0"));
        assert_eq!(suite.attr("skipped"), Some("0"));
        assert_eq!(suite.attr("time"), Some("12.346"));
        assert_eq!(suite.attr("timestamp"), None);
        let cases = named(&elements, "testcase");
        let names: Vec<&str> = cases.iter().filter_map(|c| c.attr("name")).collect();
        assert_eq!(
            names,
            vec![
                "max=200ms (all)",
                "count=0 (all)",
                "process:p99=50ms (pid 12)"
            ]
        );
        assert!(cases.iter().all(|c| c.attr("classname") == Some(CLASSNAME)));
        assert!(cases.iter().all(|c| c.attr("time") == Some("0")));
        let failures = named(&elements, "failure");
        assert_eq!(failures.len(), 2);
        let message = "longest stall = 212.3 ms, limit 200.0 ms";
        assert_eq!(failures[0].attr("message"), Some(message));
        assert_eq!(failures[0].attr("type"), Some(FAILURE_TYPE));
        assert_eq!(failures[0].text, message);
        assert_eq!(failures[0].depth, 3);
    }

    #[test]
    fn failures_sit_inside_their_own_case() {
        let xml = junit_xml(
            &verdict(vec![
                result("count=0", "all", true),
                result("max=200ms", "all", false),
            ]),
            "s",
            1.0,
        );
        let passing = xml.find("name=\"count=0 (all)\"").expect("passing case");
        let failing = xml.find("name=\"max=200ms (all)\"").expect("failing case");
        let failure = xml.find("<failure").expect("failure");
        assert!(passing < failing && failing < failure, "{xml}");
        assert!(
            xml[passing..failing].contains("/>"),
            "passing case is empty: {xml}"
        );
    }

    #[test]
    fn no_budgets_is_one_passing_case() {
        let xml = junit_xml(&Verdict::default(), "stallscope", 5.0);
        let elements = parse_ok(&xml);
        let suite = named(&elements, "testsuite")[0];
        assert_eq!(suite.attr("tests"), Some("1"));
        assert_eq!(suite.attr("failures"), Some("0"));
        let cases = named(&elements, "testcase");
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].attr("name"), Some("no budgets"));
        assert!(named(&elements, "failure").is_empty());
    }

    #[test]
    fn special_characters_are_escaped_everywhere() {
        let nasty = "a&b<c>d\"e'f\ng\th\u{1}i";
        let mut bad = result(nasty, nasty, false);
        bad.measured = nasty.into();
        let xml = junit_xml(&verdict(vec![bad]), nasty, 1.0);
        let elements = parse_ok(&xml);
        let suite = named(&elements, "testsuite")[0];
        let expected = "a&b<c>d\"e'f\ng\th\u{FFFD}i";
        assert_eq!(suite.attr("name"), Some(expected));
        let case = named(&elements, "testcase")[0];
        assert_eq!(
            case.attr("name"),
            Some(format!("{expected} ({expected})").as_str())
        );
        let failure = named(&elements, "failure")[0];
        assert!(
            failure
                .attr("message")
                .is_some_and(|m| m.starts_with(expected))
        );
        assert!(failure.text.starts_with(expected));
        assert!(!xml.contains('\u{1}'));
        assert_eq!(
            sanitize::xml_attribute("<&>\"'"),
            "&lt;&amp;&gt;&quot;&apos;",
            "the five predefined entities"
        );
        assert_eq!(sanitize::xml_attribute("a\nb\tc\rd"), "a&#10;b&#9;c&#13;d");
        assert_eq!(sanitize::xml("a\nb\tc\rd<"), "a\nb\tc&#13;d&lt;");
        assert_eq!(
            sanitize::xml("\u{0}\u{1F}\u{FFFE}\u{1F600}"),
            "\u{FFFD}\u{FFFD}\u{FFFD}\u{1F600}"
        );
    }

    #[test]
    fn system_out_lists_the_verdict() {
        let xml = junit_xml(
            &verdict(vec![
                result("max=200ms", "all", false),
                result("count=0", "all", true),
            ]),
            "s",
            1.0,
        );
        let elements = parse_ok(&xml);
        let out = named(&elements, "system-out")[0];
        assert_eq!(
            out.text,
            "FAIL max=200ms (all): longest stall = 212.3 ms, limit 200.0 ms\n\
             ok   count=0 (all): longest stall = 212.3 ms, limit 200.0 ms\n"
        );
        assert_eq!(named(&elements, "system-err").len(), 1);
        assert_eq!(named(&elements, "properties").len(), 1);
    }

    #[test]
    fn odd_times_and_names_still_make_a_valid_suite() {
        for (duration, expected) in [
            (f64::NAN, "0.000"),
            (-1.0, "0.000"),
            (f64::INFINITY, "0.000"),
            (0.0, "0.000"),
            (0.0004, "0.000"),
            (90.5, "90.500"),
        ] {
            let xml = junit_xml(&Verdict::default(), "  ", duration);
            let elements = parse_ok(&xml);
            let suite = named(&elements, "testsuite")[0];
            assert_eq!(suite.attr("time"), Some(expected), "{duration}");
            assert_eq!(suite.attr("name"), Some("stallscope"));
        }
    }

    #[test]
    fn stamped_suites_carry_timestamp_and_hostname() {
        let xml = junit_xml_stamped(
            &verdict(vec![result("max=1s", "all", true)]),
            "s",
            2.0,
            1_700_000_000,
            "ci-runner<1>",
        );
        let elements = parse_ok(&xml);
        let suite = named(&elements, "testsuite")[0];
        assert_eq!(suite.attr("timestamp"), Some("2023-11-14T22:13:20"));
        assert_eq!(suite.attr("hostname"), Some("ci-runner<1>"));
        assert_eq!(suite.attr("id"), Some("0"));
        assert_eq!(suite.attr("package"), Some("stallscope"));
        let xml = junit_xml_stamped(&Verdict::default(), "s", 2.0, 0, " ");
        let elements = parse_ok(&xml);
        let suite = named(&elements, "testsuite")[0];
        assert_eq!(suite.attr("hostname"), Some("localhost"));
        assert_eq!(suite.attr("timestamp"), Some("1970-01-01T00:00:00"));
    }

    #[test]
    fn utc_timestamps_are_calendar_correct() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00");
        assert_eq!(utc_timestamp(86_399), "1970-01-01T23:59:59");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(utc_timestamp(951_868_800), "2000-03-01T00:00:00");
        assert_eq!(utc_timestamp(1_709_164_800), "2024-02-29T00:00:00");
        assert_eq!(utc_timestamp(1_735_689_599), "2024-12-31T23:59:59");
        assert_eq!(utc_timestamp(4_102_444_800), "2100-01-01T00:00:00");
        assert_eq!(utc_timestamp(4_107_542_400), "2100-03-01T00:00:00");
    }

    #[test]
    fn the_checker_rejects_broken_xml() {
        let decl = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
        for broken in [
            "<a><b></a></b>",
            "<a>x & y</a>",
            "<a b=\"<\"/>",
            "<a b=c/>",
            "<a/><b/>",
            "<a>&nbsp;</a>",
            "<a b=\"1\" b=\"2\"/>",
            "<a>\u{1}</a>",
        ] {
            assert!(
                parse_xml(&format!("{decl}{broken}")).is_err(),
                "{broken} accepted"
            );
        }
        assert!(parse_xml(&format!("{decl}<a b=\"&amp;\">&#10;</a>")).is_ok());
    }
}
