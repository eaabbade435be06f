//! What the dialog does with focus, keys, clicks and time, apart from any
//! window system, so the X11 window ([`super::window`]) and the Wayland
//! overlay ([`super::wayland`]) obey exactly the same rules:
//!
//! * OK and Enter are inert until `focus_delay_ms` after the dialog gained
//!   keyboard focus (losing focus re-arms the delay), so keystrokes aimed at
//!   another window cannot confirm it;
//! * Esc, Cancel or closing denies; so does the timeout;
//! * a question (`DialogRequest::question`) has Deny, Allow always and Allow
//!   once instead of a password field; the allowing buttons (and Enter,
//!   which allows once) are inert under the same focus delay.

use std::time::{Duration, Instant};

use ab_glyph::FontRef;
use zeroize::Zeroizing;

use super::render::{
    self, Frame, View, ALWAYS_BUTTON, CANCEL_BUTTON, DENY_BUTTON, OK_BUTTON, ONCE_BUTTON,
};
use super::DialogRequest;

/// How the dialog ended.
pub enum Outcome {
    Password(Zeroizing<String>),
    /// A question was allowed, once or always.
    Allowed {
        always: bool,
    },
    Cancelled,
    TimedOut,
}

/// A key the dialog acts on, as the window system reported it (synthetic
/// events already dropped).
pub enum Key<'a> {
    Escape,
    Enter,
    Backspace,
    /// Text the key produced.
    Text(&'a str),
}

/// The dialog's state between events.
pub struct Dialog {
    request: DialogRequest,
    password: Zeroizing<String>,
    focused_at: Option<Instant>,
    deadline: Instant,
    outcome: Option<Outcome>,
    /// Whether the last frame drew OK as live; a change asks for a redraw.
    drawn_armed: bool,
}

impl Dialog {
    pub fn new(request: DialogRequest) -> Dialog {
        let deadline = Instant::now() + Duration::from_secs(request.timeout_secs);
        Dialog {
            request,
            password: Zeroizing::new(String::new()),
            focused_at: None,
            deadline,
            outcome: None,
            drawn_armed: false,
        }
    }

    pub fn request(&self) -> &DialogRequest {
        &self.request
    }

    fn armed_at(&self) -> Option<Instant> {
        self.focused_at
            .map(|t| t + Duration::from_millis(self.request.focus_delay_ms))
    }

    fn ok_armed(&self, now: Instant) -> bool {
        self.armed_at().is_some_and(|t| now >= t)
    }

    /// The answer, once there is one; the window then closes.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    /// Ends the dialog; the first answer stands.
    pub fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    /// The dialog gained or lost keyboard focus.
    pub fn focus(&mut self, focused: bool) {
        self.focused_at = focused.then(Instant::now);
    }

    /// A question's allowing answer, honoured only once armed.
    fn allow(&mut self, always: bool) {
        if self.ok_armed(Instant::now()) {
            self.finish(Outcome::Allowed { always });
        }
    }

    fn submit(&mut self) {
        if self.request.question.is_some() {
            // Enter allows once; "always" takes a click.
            return self.allow(false);
        }
        if !self.ok_armed(Instant::now()) {
            return;
        }
        let pw = std::mem::take(&mut *self.password);
        self.finish(Outcome::Password(Zeroizing::new(pw)));
    }

    /// A key press.
    pub fn key(&mut self, key: Key) {
        match key {
            Key::Escape => self.finish(Outcome::Cancelled),
            Key::Enter => self.submit(),
            Key::Backspace => {
                self.password.pop();
            }
            Key::Text(_) if self.request.question.is_some() => {}
            Key::Text(text) => {
                for c in text.chars().filter(|c| !c.is_control()) {
                    if self.password.len() < 1024 {
                        self.password.push(c);
                    }
                }
            }
        }
    }

    /// A left click at (`x`, `y`) in the dialog's pixels.
    pub fn click(&mut self, x: f64, y: f64) {
        if self.request.question.is_some() {
            if ONCE_BUTTON.contains(x, y) {
                self.allow(false);
            } else if ALWAYS_BUTTON.contains(x, y) {
                self.allow(true);
            } else if DENY_BUTTON.contains(x, y) {
                self.finish(Outcome::Cancelled);
            }
        } else if OK_BUTTON.contains(x, y) {
            self.submit();
        } else if CANCEL_BUTTON.contains(x, y) {
            self.finish(Outcome::Cancelled);
        }
    }

    /// Checks the clock: times out at the deadline. Returns when to look
    /// again (the deadline, or the moment OK arms) and whether the picture
    /// is stale (OK armed since the last frame).
    pub fn tick(&mut self, now: Instant) -> (Instant, bool) {
        if now >= self.deadline {
            self.finish(Outcome::TimedOut);
        }
        let mut wake = self.deadline;
        if let Some(t) = self.armed_at() {
            if t > now {
                wake = wake.min(t);
            }
        }
        (wake, self.ok_armed(now) != self.drawn_armed)
    }

    /// The picture to show now.
    pub fn frame(&mut self, font: &FontRef) -> Frame {
        let view = View {
            request: &self.request,
            password_len: self.password.chars().count(),
            ok_armed: self.ok_armed(Instant::now()),
        };
        self.drawn_armed = view.ok_armed;
        render::render(&view, font)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{Rgb, Seal};
    use authd_client::protocol::{Provenance, Reason};

    fn dialog(focus_delay_ms: u64, question: Option<&str>) -> Dialog {
        Dialog::new(DialogRequest {
            vm: "vm1".into(),
            principal: "alice".into(),
            reason: Reason::default(),
            provenance: Provenance::Host,
            seal: Seal::new("owl", Rgb(0, 0, 0)).unwrap(),
            timeout_secs: 60,
            focus_delay_ms,
            question: question.map(str::to_owned),
            vm_window_titles: Vec::new(),
        })
    }

    #[test]
    fn enter_is_inert_until_focused_and_after_the_delay() {
        let mut d = dialog(0, None);
        d.key(Key::Text("pw"));
        d.key(Key::Enter);
        assert!(d.outcome().is_none(), "never focused");
        d.focus(true);
        d.key(Key::Enter);
        match d.take_outcome() {
            Some(Outcome::Password(p)) => assert_eq!(p.as_str(), "pw"),
            _ => panic!("no password"),
        }

        // A delay no test outlasts: Enter stays inert.
        let mut d = dialog(3_600_000, None);
        d.focus(true);
        d.key(Key::Enter);
        assert!(d.outcome().is_none());
        let (wake, stale) = d.tick(Instant::now());
        assert!(!stale);
        assert!(wake > Instant::now());
    }

    #[test]
    fn escape_denies_and_the_first_answer_stands() {
        let mut d = dialog(0, None);
        d.key(Key::Escape);
        d.focus(true);
        d.key(Key::Enter);
        assert!(matches!(d.outcome(), Some(Outcome::Cancelled)));
    }

    #[test]
    fn a_question_takes_no_text_and_enter_allows_once() {
        let mut d = dialog(0, Some("may it?"));
        d.focus(true);
        d.key(Key::Text("x"));
        d.key(Key::Enter);
        assert!(matches!(
            d.outcome(),
            Some(Outcome::Allowed { always: false })
        ));
    }
}
