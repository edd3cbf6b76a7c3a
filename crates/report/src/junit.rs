//! `--junit FILE`: JUnit XML, the format CI systems read (GitLab, Jenkins, test-report actions),
//! laid out as nextest writes it: one `<testsuite>` per scenario, one `<testcase>` per
//! expectation. A failed expectation is a `<failure>` carrying what was observed; one the run
//! could not observe is `<skipped>`; a run that could not finish adds an `<error>` case. The
//! diagnosis goes in each suite's `<system-out>`.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use cwlab_model::events::Reporter;
use cwlab_model::report::Verdict;
use cwlab_model::Report;

use crate::text::esc;

/// Collects every run's report and writes one XML file when they have all ended.
pub struct Junit {
    path: PathBuf,
    suites: Vec<String>,
    tests: usize,
    failures: usize,
    errors: usize,
    time: f64,
}

impl Junit {
    /// JUnit XML to `path`, written when every run has ended.
    pub fn new(path: PathBuf) -> Junit {
        Junit { path, suites: Vec::new(), tests: 0, failures: 0, errors: 0, time: 0.0 }
    }
}

impl Reporter for Junit {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        let suite = suite(r);
        self.tests += suite.tests;
        self.failures += suite.failures;
        self.errors += suite.errors;
        self.time += r.duration_ms as f64 / 1000.0;
        self.suites.push(suite.xml);
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            r#"<testsuites name="cwlab" tests="{}" failures="{}" errors="{}" time="{:.3}">"#,
            self.tests, self.failures, self.errors, self.time
        );
        for s in &self.suites {
            x.push_str(s);
        }
        x.push_str("</testsuites>\n");
        cwlab_os::write_atomically(&self.path, x.as_bytes())
    }
}

struct Suite {
    xml: String,
    tests: usize,
    failures: usize,
    errors: usize,
}

fn suite(r: &Report) -> Suite {
    let name = &r.scenario.name;
    let error = (r.verdict == Verdict::Error).then(|| r.error.clone().unwrap_or_default());
    let failures = r.expectations.iter().filter(|e| e.observable && !e.passed).count();
    let tests = r.expectations.len() + usize::from(error.is_some());
    let mut x = String::new();
    let _ = writeln!(
        x,
        r#"  <testsuite name="{}" tests="{tests}" failures="{failures}" errors="{}" skipped="{}" time="{:.3}">"#,
        esc(name),
        usize::from(error.is_some()),
        r.expectations.iter().filter(|e| !e.observable).count(),
        r.duration_ms as f64 / 1000.0
    );
    let _ = writeln!(
        x,
        r#"    <properties><property name="file" value="{}"/><property name="behaviour" value="{}"/><property name="isolation" value="{}"/><property name="finding" value="{}"/></properties>"#,
        esc(&r.scenario.file),
        esc(&r.scenario.behaviour),
        esc(&r.isolation.to_string()),
        r.diagnosis.primary().map_or("", |f| f.kind.name())
    );
    for e in &r.expectations {
        let _ = write!(x, r#"    <testcase name="{}" classname="{}""#, esc(&e.text), esc(name));
        let observed = e.observed.map_or("nothing".to_string(), |v| v.to_string());
        if !e.observable {
            let _ =
                writeln!(x, ">\n      <skipped message=\"{}\"/>\n    </testcase>", esc(&e.detail));
        } else if e.passed {
            let _ = writeln!(x, "/>");
        } else {
            let _ = writeln!(
                x,
                ">\n      <failure message=\"observed {}: {}\" type=\"expectation\">{}: observed {}; {}</failure>\n    </testcase>",
                esc(&observed),
                esc(&e.detail),
                esc(&e.text),
                esc(&observed),
                esc(&e.detail)
            );
        }
    }
    if let Some(err) = &error {
        let _ = writeln!(
            x,
            "    <testcase name=\"the run finishes\" classname=\"{}\">\n      <error message=\"{}\" type=\"run\"/>\n    </testcase>",
            esc(name),
            esc(err)
        );
    }
    let mut out = String::new();
    for f in &r.diagnosis.findings {
        let _ = writeln!(out, "{}: {}", f.kind, f.explanation);
        if let Some(e) = &f.evidence {
            let _ = writeln!(out, "  evidence: {e}");
        }
        if let Some(fix) = f.fix_line() {
            let _ = writeln!(out, "  {fix}");
        }
    }
    let _ = writeln!(x, "    <system-out>{}</system-out>", esc(&out));
    x.push_str("  </testsuite>\n");
    Suite { xml: x, tests, failures, errors: usize::from(error.is_some()) }
}
