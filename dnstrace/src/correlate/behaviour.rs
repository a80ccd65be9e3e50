//! What each resolver library does with an answer it receives: use it, or
//! throw it away and ask again (docs/resolvers.md has the measurements).
//! Correlation consults this only to read evidence it already has (a
//! question asked again): the shape alone never makes a verdict.

use super::attempt::Shape;
use crate::{decode::Flags, resolver::Library};

const NOERROR: u16 = 0;
const FORMERR: u16 = 1;
const NXDOMAIN: u16 = 3;

/// Whether `library` throws `shape` away rather than use it as the answer:
/// `None` when that depends on a library that is not known (a trace read
/// from a file, or a process that exited before it could be read).
pub fn rejects(library: Option<&Library>, shape: &Shape) -> Option<bool> {
    if shape.flags.contains(Flags::TC) {
        // musl before 1.2.4 has no TCP fallback and takes what came.
        return match library {
            Some(Library::Musl) => Some(false),
            Some(_) => Some(true),
            None => None,
        };
    }
    if shape.is_server_failure() {
        // SERVFAIL, NOTIMP, REFUSED: every library asks elsewhere or again
        // (musl ignores NOTIMP and REFUSED and keeps waiting).
        return Some(true);
    }
    match shape.rcode {
        NXDOMAIN => Some(false),
        NOERROR => match library {
            Some(Library::Glibc { .. }) => Some(is_glibc_lame(shape)),
            Some(Library::Go) => Some(is_go_lame(shape)),
            Some(Library::Musl) => Some(false),
            None if is_glibc_lame(shape) || is_go_lame(shape) => None,
            None => Some(false),
        },
        // glibc returns FORMERR to the caller; Go and musl look elsewhere.
        FORMERR => match library {
            Some(Library::Glibc { .. }) => Some(false),
            Some(_) => Some(true),
            None => None,
        },
        _ => None,
    }
}

/// Whether `library` asks again from a fresh socket to the same server when
/// it throws an answer away, as Go does (a socket per try). glibc asks again
/// on the socket it used or moves to the next server, and musl re-sends on
/// its one socket; a fresh socket to the same server is then the program
/// looking up again.
pub fn retries_on_fresh_socket(library: Option<&Library>) -> Option<bool> {
    library.map(|library| *library == Library::Go)
}

/// Whether `library` resolves in the thread that calls it and sends a
/// query again (after a timeout, to the next server, over TCP) with the
/// query's own id: glibc re-sends the same buffer, musl retransmits the
/// same query. Go makes a new query, and a new socket, for every try.
pub fn retries_with_the_same_id(library: Option<&Library>) -> bool {
    matches!(library, Some(Library::Glibc { .. } | Library::Musl))
}

/// Whether `library` ignores an answer whose question is not the query's
/// (glibc, Go); musl checks the id alone and takes it.
pub fn checks_question(library: Option<&Library>) -> Option<bool> {
    library.map(|library| *library != Library::Musl)
}

/// Whether `library` takes an answer without a question section (a bare
/// 12-byte header) as the answer to the query with its id. Go's
/// `checkResponse` wants the question back: it ignores such an answer and
/// waits for its timeout.
pub fn takes_bare_answers(library: Option<&Library>) -> bool {
    library != Some(&Library::Go)
}

/// glibc's "lame referral" test in `send_dg` (resolv/res_send.c): NOERROR,
/// no answers, neither AA nor RA, and no additional records at all.
pub fn is_glibc_lame(shape: &Shape) -> bool {
    is_go_lame(shape) && shape.additional == 0
}

/// Go's `checkHeader` (net/dnsclient_unix.go): NOERROR, no answers, neither
/// AA nor RA, whatever the additional section holds (an OPT record too).
pub fn is_go_lame(shape: &Shape) -> bool {
    shape.rcode == NOERROR
        && shape.answers == 0
        && !shape.flags.contains(Flags::AA)
        && !shape.flags.contains(Flags::RA)
}

/// Whether some library's lame-referral rule fits `shape`, and which rule
/// the explanation should quote.
pub fn lame_rule(library: Option<&Library>, shape: &Shape) -> Option<LameRule> {
    match library {
        Some(Library::Go) if is_go_lame(shape) => Some(LameRule::Go),
        Some(Library::Musl) => None,
        _ if is_glibc_lame(shape) => Some(LameRule::Glibc),
        None if is_go_lame(shape) => Some(LameRule::Go),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LameRule {
    /// ARCOUNT must be 0: an OPT record lets the answer through.
    Glibc,
    /// Any ARCOUNT.
    Go,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rcode: u16, flags: Flags, answers: u16, additional: u16) -> Shape {
        Shape {
            rcode,
            flags,
            answers,
            authority: 1,
            additional,
        }
    }

    const GLIBC: Library = Library::Glibc {
        major: 2,
        minor: 36,
    };

    #[test]
    fn go_rejects_a_lame_answer_with_an_opt_record_and_glibc_does_not() {
        let lame_with_opt = shape(NOERROR, Flags::RD, 0, 1);
        assert_eq!(rejects(Some(&Library::Go), &lame_with_opt), Some(true));
        assert_eq!(rejects(Some(&GLIBC), &lame_with_opt), Some(false));
        assert_eq!(rejects(Some(&Library::Musl), &lame_with_opt), Some(false));
        assert_eq!(
            rejects(None, &lame_with_opt),
            None,
            "depends on the library"
        );
        let lame = shape(NOERROR, Flags::RD, 0, 0);
        assert_eq!(rejects(Some(&GLIBC), &lame), Some(true));
        assert_eq!(
            lame_rule(Some(&Library::Go), &lame_with_opt),
            Some(LameRule::Go)
        );
        assert_eq!(lame_rule(Some(&GLIBC), &lame_with_opt), None);
    }

    #[test]
    fn final_answers_are_final_for_every_library() {
        for library in [None, Some(&GLIBC), Some(&Library::Go), Some(&Library::Musl)] {
            let nxdomain = shape(NXDOMAIN, Flags::RA, 0, 0);
            let nodata = shape(NOERROR, Flags::RA, 0, 0);
            let address = shape(NOERROR, Flags::RD, 1, 0);
            let refused = shape(5, Flags::RA, 0, 0);
            assert_eq!(rejects(library, &nxdomain), Some(false));
            assert_eq!(rejects(library, &nodata), Some(false));
            assert_eq!(rejects(library, &address), Some(false));
            assert_eq!(rejects(library, &refused), Some(true));
        }
    }
}
