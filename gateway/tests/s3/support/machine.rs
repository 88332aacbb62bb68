//! Turns on the machine: how many tests run their servers at once, and which run alone.
//!
//! libtest runs this binary's tests on parallel threads (one per core by default), and every test
//! starts real processes: perch, moto (Python), sometimes strace. Each test takes a turn first:
//! [`share`] runs it beside at most `shared_limit() - 1` others; [`alone`] waits for every running
//! test to end, holds the others back (it goes before those that come after it) and runs by
//! itself.
//!
//! A test runs alone when it races a timer on purpose (a fill still under way, a request still in
//! flight at SIGTERM, a TTL not yet past): another test's load would make it flaky. Heavy tests without such bounds (the kill -9
//! loop, strace, thousands of connections) share: the tests their load could break run alone.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Who holds a turn now.
struct Turns {
    sharing: usize,
    alone: bool,
    /// Tests waiting to run alone: no shared turn starts before them.
    waiting_alone: usize,
}

static TURNS: Mutex<Turns> = Mutex::new(Turns {
    sharing: 0,
    alone: false,
    waiting_alone: 0,
});
static TURN_ENDED: Condvar = Condvar::new();

thread_local! {
    static THIS_THREAD_HAS_A_TURN: Cell<bool> = const { Cell::new(false) };
}

/// Tests at most that share the machine: moto is one Python process per test, perch runs a few
/// threads, and past four stacks on any machine they mostly wait for each other.
fn shared_limit() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4)
}

fn turns() -> MutexGuard<'static, Turns> {
    // A test that panics never holds this lock (only its turn), so poisoning carries no meaning.
    TURNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A test's turn; it ends when dropped (keep it to the end of the test: `let _turn = ...`).
#[must_use = "the turn ends when this is dropped"]
pub struct Turn {
    alone: bool,
}

/// A turn beside other tests.
pub fn share() -> Turn {
    claim_for_this_thread();
    let mut t = turns();
    while t.alone || t.waiting_alone > 0 || t.sharing >= shared_limit() {
        t = TURN_ENDED.wait(t).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    t.sharing += 1;
    Turn { alone: false }
}

/// A turn with no other test running.
pub fn alone() -> Turn {
    claim_for_this_thread();
    let mut t = turns();
    t.waiting_alone += 1;
    while t.alone || t.sharing > 0 {
        t = TURN_ENDED.wait(t).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    t.waiting_alone -= 1;
    t.alone = true;
    Turn { alone: true }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut t = turns();
        if self.alone {
            t.alone = false;
        } else {
            t.sharing -= 1;
        }
        drop(t);
        TURN_ENDED.notify_all();
        THIS_THREAD_HAS_A_TURN.set(false);
    }
}

fn claim_for_this_thread() {
    assert!(
        !THIS_THREAD_HAS_A_TURN.replace(true),
        "this test already has a turn: take one, once, at its start"
    );
}

/// Panics unless the calling test took its turn (servers start only within one).
#[track_caller]
pub fn assert_turn_taken() {
    assert!(
        THIS_THREAD_HAS_A_TURN.get(),
        "a test starts servers only within its turn: begin it with `let _turn = machine::share();` \
         (or `machine::alone()`)"
    );
}
