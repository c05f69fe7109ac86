//! Routes: trigger patterns (`BOOKING_CREATED`, `BOOKING_*`, `*`) to sinks, optionally with a
//! destination overriding the naming rule. The first matching route wins; a delivery goes to
//! every sink of that route.

/// One route, as configured (a sink listed twice is kept once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    patterns: Vec<String>,
    /// Names of the sinks this route fans out to.
    pub sinks: Vec<String>,
    /// Destination replacing the naming rule, if set.
    pub destination: Option<String>,
}

/// Why a route is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("routes[{0}].triggers is empty")]
    NoTriggers(usize),
    #[error("routes[{0}].sinks is empty")]
    NoSinks(usize),
    #[error("routes[{0}].triggers has {1:?}: use letters, digits, `_` and `*`")]
    BadPattern(usize, String),
    #[error("routes[{0}].destination is empty")]
    EmptyDestination(usize),
}

impl Route {
    /// A route; `index` only names it in errors.
    pub fn new(
        index: usize,
        triggers: &[String],
        sinks: Vec<String>,
        destination: Option<String>,
    ) -> Result<Route, RouteError> {
        if triggers.is_empty() {
            return Err(RouteError::NoTriggers(index));
        }
        if sinks.is_empty() {
            return Err(RouteError::NoSinks(index));
        }
        if destination.as_deref().is_some_and(|d| d.trim().is_empty()) {
            return Err(RouteError::EmptyDestination(index));
        }
        let patterns = triggers
            .iter()
            .map(|t| {
                let valid = !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'*');
                if valid {
                    Ok(t.to_ascii_uppercase())
                } else {
                    Err(RouteError::BadPattern(index, t.clone()))
                }
            })
            .collect::<Result<_, _>>()?;
        // A sink named twice is one target: the delivery goes to it once.
        let mut unique: Vec<String> = Vec::with_capacity(sinks.len());
        for sink in sinks {
            if !unique.contains(&sink) {
                unique.push(sink);
            }
        }
        Ok(Route {
            patterns,
            sinks: unique,
            destination,
        })
    }

    /// The trigger patterns, upper-cased.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether any pattern matches `trigger` (ASCII case-insensitive).
    pub fn matches(&self, trigger: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), trigger.as_bytes()))
    }
}

/// Routes in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable { routes }
    }

    /// The first route matching `trigger`.
    pub fn find(&self, trigger: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(trigger))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// `*` matches any run of characters; everything else matches itself, ignoring ASCII case.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_named_twice_is_one_target() {
        let r = Route::new(
            0,
            &["*".into()],
            vec!["a".into(), "b".into(), "a".into()],
            None,
        )
        .unwrap();
        assert_eq!(r.sinks, vec!["a".to_owned(), "b".to_owned()]);
    }

    fn route(triggers: &[&str], sink: &str) -> Route {
        let triggers: Vec<String> = triggers.iter().map(|s| s.to_string()).collect();
        Route::new(0, &triggers, vec![sink.into()], None).unwrap()
    }

    #[test]
    fn globbing() {
        assert!(glob(b"*", b"ANYTHING"));
        assert!(glob(b"BOOKING_*", b"BOOKING_CREATED"));
        assert!(glob(b"BOOKING_*", b"booking_created"));
        assert!(!glob(b"BOOKING_*", b"MEETING_ENDED"));
        assert!(glob(b"*_NO_SHOW", b"AFTER_HOSTS_CAL_VIDEO_NO_SHOW"));
        assert!(glob(b"BOOKING_CREATED", b"BOOKING_CREATED"));
        assert!(!glob(b"BOOKING_CREATED", b"BOOKING_CREATED_X"));
    }

    #[test]
    fn first_match_wins() {
        let table = RouteTable::new(vec![
            route(&["BOOKING_CREATED"], "a"),
            route(&["BOOKING_*"], "b"),
            route(&["*"], "c"),
        ]);
        assert_eq!(table.find("BOOKING_CREATED").unwrap().sinks, ["a"]);
        assert_eq!(table.find("BOOKING_PAID").unwrap().sinks, ["b"]);
        assert_eq!(table.find("PING").unwrap().sinks, ["c"]);
        assert!(RouteTable::new(vec![route(&["PING"], "a")])
            .find("X")
            .is_none());
    }

    #[test]
    fn invalid_routes() {
        let t = vec!["A B".to_string()];
        assert!(Route::new(3, &t, vec!["s".into()], None).is_err());
        assert!(Route::new(0, &[], vec!["s".into()], None).is_err());
        assert!(Route::new(0, &["*".into()], vec![], None).is_err());
    }
}
