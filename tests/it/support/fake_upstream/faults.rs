//! Faults the test queues up; each request takes at most one header-stage and one body-stage
//! fault, the first in queue order whose [`Match`] fits.
//!
//! Header-stage faults (status, delay) fire at the first server the request reaches (the
//! registry, before any CDN redirect). Body-stage faults fire where bytes are served: the CDN
//! when redirects are on, else the registry. "After N bytes" counts bytes of *this response*.

use std::time::Duration;

use http::Method;

use super::stats::{Kind, Role};

#[derive(Clone, Debug)]
pub enum Action {
    /// Answer `code` (503, 429, …) with an OCI error body and optional `Retry-After: secs`.
    Status { code: u16, retry_after: Option<u64> },
    /// Wait before sending response headers.
    DelayHeaders(Duration),
    /// Send N body bytes, then reset the TCP connection (RST via SO_LINGER 0).
    ResetAfter(u64),
    /// Send N body bytes, go silent for `pause`, then continue or reset.
    Stall {
        after: u64,
        pause: Duration,
        then: AfterStall,
    },
    /// Flip every bit of the body byte at offset `at` (response-relative).
    Corrupt { at: u64 },
    /// Answer 200 with the full body even when a `Range` was asked for.
    IgnoreRange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStall {
    Continue,
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Headers,
    Body,
}

impl Action {
    fn stage(&self) -> Stage {
        match self {
            Action::Status { .. } | Action::DelayHeaders(_) => Stage::Headers,
            _ => Stage::Body,
        }
    }
}

/// Which requests a fault applies to; `None` fields match anything.
#[derive(Clone, Debug, Default)]
pub struct Match {
    pub role: Option<Role>,
    pub kind: Option<Kind>,
    pub method: Option<Method>,
    /// A digest or tag: matches the reference in the URL or the digest a tag resolved to.
    pub reference: Option<String>,
}

/// One queued fault: `action` for the next `times` matching requests.
#[derive(Clone, Debug)]
pub struct Fault {
    pub when: Match,
    pub action: Action,
    pub times: usize,
}

impl Fault {
    pub fn new(action: Action) -> Fault {
        Fault {
            when: Match::default(),
            action,
            times: 1,
        }
    }
    pub fn status(code: u16, retry_after: Option<u64>) -> Fault {
        Fault::new(Action::Status { code, retry_after })
    }
    pub fn reset_after(bytes: u64) -> Fault {
        Fault::new(Action::ResetAfter(bytes))
    }
    pub fn stall(after: u64, pause: Duration, then: AfterStall) -> Fault {
        Fault::new(Action::Stall { after, pause, then })
    }
    pub fn corrupt(at: u64) -> Fault {
        Fault::new(Action::Corrupt { at })
    }
    pub fn ignore_range() -> Fault {
        Fault::new(Action::IgnoreRange)
    }
    pub fn delay_headers(delay: Duration) -> Fault {
        Fault::new(Action::DelayHeaders(delay))
    }
    pub fn kind(mut self, kind: Kind) -> Fault {
        self.when.kind = Some(kind);
        self
    }
    pub fn role(mut self, role: Role) -> Fault {
        self.when.role = Some(role);
        self
    }
    pub fn method(mut self, method: Method) -> Fault {
        self.when.method = Some(method);
        self
    }
    pub fn reference(mut self, reference: &str) -> Fault {
        self.when.reference = Some(reference.to_string());
        self
    }
    pub fn times(mut self, times: usize) -> Fault {
        self.times = times;
        self
    }
}

/// What the request looks like, for matching.
pub struct Target<'a> {
    pub role: Role,
    pub kind: Kind,
    pub method: &'a Method,
    /// Tag and/or digests this request is about.
    pub references: &'a [&'a str],
}

#[derive(Default)]
pub struct FaultQueue {
    queue: Vec<Fault>,
    pub fired: Vec<Action>,
}

impl FaultQueue {
    pub fn push(&mut self, fault: Fault) {
        self.queue.push(fault);
    }

    pub fn pending(&self) -> usize {
        self.queue.iter().map(|f| f.times).sum()
    }

    /// Takes one use of the first fault of `stage` matching `target`.
    pub fn take(&mut self, stage: Stage, target: &Target<'_>) -> Option<Action> {
        let pos = self
            .queue
            .iter()
            .position(|f| f.action.stage() == stage && matches(&f.when, target))?;
        let fault = &mut self.queue[pos];
        let action = fault.action.clone();
        fault.times -= 1;
        if fault.times == 0 {
            self.queue.remove(pos);
        }
        self.fired.push(action.clone());
        Some(action)
    }
}

fn matches(m: &Match, t: &Target<'_>) -> bool {
    m.role.is_none_or(|r| r == t.role)
        && m.kind.is_none_or(|k| k == t.kind)
        && m.method.as_ref().is_none_or(|me| me == t.method)
        && m.reference
            .as_ref()
            .is_none_or(|r| t.references.contains(&r.as_str()))
}
