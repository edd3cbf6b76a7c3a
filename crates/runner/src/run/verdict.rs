//! The verdict: the expectations over the report, the witnesses the scenario could not do
//! without, what stopped the run, too few connections for a verdict, and the diagnosis.

use std::time::Duration;

use cwlab_model::diagnosis::Diagnosis;
use cwlab_model::expect::{evaluate, Evidence};
use cwlab_model::report::{Report, Sample, Verdict};
use cwlab_model::{duration, scenario, Scenario};
use cwlab_os::signals;

use super::record::{Record, Stop};

/// Judges the run: the expectations over its report, the witnesses it could not do without,
/// what stopped it, the verdict and the diagnosis.
pub(super) fn finish(rec: Record<'_>, scenario: &Scenario, timeout: Duration) -> Report {
    let mut r = rec.report;
    r.final_counts = r.samples.last().map(Sample::counts).unwrap_or_default();
    r.interrupted = matches!(rec.stop, Some((Stop::Interrupted(_), _)));
    r.stopped_in = rec.stop.map(|(_, p)| p);
    r.expectations = {
        let evidence = Evidence::of(&r);
        scenario.expectations.iter().map(|e| evaluate(e, &evidence)).collect()
    };
    let missing: Vec<String> = scenario
        .require
        .iter()
        .filter_map(|w| {
            let (available, note) = match w {
                scenario::Witness::Transitions => (r.transitions.available, &r.transitions.note),
                scenario::Witness::Packets => (r.packets.available, &r.packets.note),
            };
            (!available).then(|| {
                format!(
                    "{} are required but cannot be observed: {}",
                    w.name(),
                    note.as_deref().unwrap_or("no witness")
                )
            })
        })
        .collect();
    r.error = rec
        .stop
        .map(|(why, phase)| match why {
            Stop::Interrupted(sig) => {
                format!("interrupted by {} in the {phase} phase", signals::name(sig))
            }
            Stop::Timeout => format!(
                "timeout: the {phase} phase did not finish within the run's {}",
                duration::format(timeout)
            ),
        })
        .or_else(|| (!missing.is_empty()).then(|| missing.join("; ")))
        .or_else(|| too_few(&r))
        .or_else(|| no_requests(&r));
    r.verdict = if r.error.is_some() {
        Verdict::Error
    } else if r.expectations.iter().filter(|e| e.observable).all(|e| e.passed) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    r.diagnosis = Diagnosis::of(&r);
    r.duration_ms = rec.started.elapsed().as_millis() as u64;
    r
}

/// A user's server that fewer than half of the connections reached: no verdict stands on
/// connections that did not happen. Says how many did, the first client error and where the
/// server listens.
fn too_few(r: &Report) -> Option<String> {
    let o = &r.client_outcome;
    if r.scenario.command.is_none() || o.happened() * 2 >= r.clients {
        return None;
    }
    let first = o.first_error.as_deref().unwrap_or("none");
    let why = match (r.server.gone, &r.server.exited) {
        (true, Some(how)) => format!("the server went away during the run ({how})"),
        (true, None) => "the server went away during the run".into(),
        _ => match &r.dialed {
            Some(d) => format!(
                "the clients dialed {d}; the server listens on {}",
                r.address.as_deref().unwrap_or("?")
            ),
            None => format!("the server listens on {}", r.address.as_deref().unwrap_or("?")),
        },
    };
    Some(format!(
        "only {} of {} connections happened, too few for a verdict: {why}; the first client error: {first}",
        o.happened(),
        r.clients
    ))
}

/// A user's client (`cwlab check --client`) that never reached the lab's server: nothing to
/// judge.
fn no_requests(r: &Report) -> Option<String> {
    let c = r.client.as_ref().filter(|c| c.requests == 0)?;
    let how = c.exited.as_deref().unwrap_or("it did not end");
    let last = match c.output.as_slice() {
        [] => "; it printed nothing".to_string(),
        lines => format!("; its last lines:\n  {}", lines.join("\n  ")),
    };
    Some(format!("the client made no request to the lab's server on port {} ({how}){last}", r.port))
}
