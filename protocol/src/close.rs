//! The fixed list of WebSocket close codes the gateway uses. The range tells the client what to do:
//! `4000–4099` reconnect now, `4100–4199` reconnect after a backoff, `4200–4299` do not reconnect
//! until something is fixed (a new token, a client bug). Documented in `docs/PROTOCOL.md`.

/// What a client should do after a close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconnectAdvice {
    Now,
    Backoff,
    Never,
}

macro_rules! close_codes {
    ($($(#[$doc:meta])* $name:ident = $code:expr, $reason:expr;)*) => {
        /// A close code with its reason text.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum CloseCode { $($(#[$doc])* $name,)* }

        impl CloseCode {
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$name,)*];

            pub fn code(self) -> u16 {
                match self { $(CloseCode::$name => $code,)* }
            }

            /// A short reason sent in the close frame (always under the 123-byte limit).
            pub fn reason(self) -> &'static str {
                match self { $(CloseCode::$name => $reason,)* }
            }

            pub fn from_code(code: u16) -> Option<CloseCode> {
                match code { $($code => Some(CloseCode::$name),)* _ => None }
            }
        }
    };
}

close_codes! {
    /// The client asked to close, or the server closes without a complaint.
    Normal = 1000, "normal closure";
    /// The node asks the client to reconnect at once (to any node).
    Reconnect = 4000, "reconnect";
    /// Nothing was received from the client within the idle timeout.
    IdleTimeout = 4001, "idle timeout";
    /// The node is draining (shutdown or rollout): reconnect elsewhere after a short backoff.
    Draining = 4100, "node draining";
    /// The client did not read its frames fast enough and its send queue filled up.
    SlowConsumer = 4101, "slow consumer";
    /// The node is overloaded.
    Overloaded = 4102, "server overloaded";
    /// The client sent frames faster than allowed.
    RateLimited = 4103, "frame rate limit exceeded";
    /// An operator closed the user's sockets (`POST /v1/admin/users/{user_id}/disconnect`): the
    /// token is still good; reconnect after a backoff.
    Disconnected = 4104, "disconnected by an operator";
    /// The token was refused when checked on the socket.
    AuthFailed = 4200, "authentication failed";
    /// The token expired and was not refreshed in time.
    TokenExpired = 4201, "token expired";
    /// The client broke the WebSocket protocol (bad framing, wrong opcode for the encoding).
    ProtocolViolation = 4202, "protocol violation";
    /// A frame or message exceeded the size limit.
    FrameTooLarge = 4203, "frame too large";
    /// The user holds too many sockets.
    TooManySockets = 4204, "too many sockets for this user";
    /// An operator revoked the user's tokens (`POST /v1/admin/users/{user_id}/revoke`): this token
    /// (and every token issued before the revoke) is refused; reconnect only with a new one.
    TokenRevoked = 4205, "token revoked";
}

impl CloseCode {
    pub fn advice(self) -> ReconnectAdvice {
        match self.code() {
            1000 | 4000..=4099 => ReconnectAdvice::Now,
            4100..=4199 => ReconnectAdvice::Backoff,
            _ => ReconnectAdvice::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_round_trip_and_fit_a_close_frame() {
        let mut seen = std::collections::HashSet::new();
        for &c in CloseCode::ALL {
            assert!(seen.insert(c.code()), "duplicate {}", c.code());
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(c.reason().len() <= 123);
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }

    #[test]
    fn ranges_give_the_advice() {
        assert_eq!(CloseCode::IdleTimeout.advice(), ReconnectAdvice::Now);
        assert_eq!(CloseCode::Draining.advice(), ReconnectAdvice::Backoff);
        assert_eq!(CloseCode::SlowConsumer.advice(), ReconnectAdvice::Backoff);
        assert_eq!(CloseCode::Disconnected.advice(), ReconnectAdvice::Backoff);
        assert_eq!(CloseCode::TokenRevoked.advice(), ReconnectAdvice::Never);
        assert_eq!(CloseCode::TokenExpired.advice(), ReconnectAdvice::Never);
        assert_eq!(
            CloseCode::ProtocolViolation.advice(),
            ReconnectAdvice::Never
        );
    }
}
