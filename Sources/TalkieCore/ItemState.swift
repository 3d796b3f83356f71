/// Where an item is in its life.
public enum ItemStatus: String, Codable, Sendable, CaseIterable {
    /// Waiting to be rendered.
    case pending
    /// Being rendered by an engine now.
    case running
    /// Rendered, verified and committed; never rendered again unless the user asks.
    case success
    /// The last attempt failed; `retry` returns it to pending.
    case failed
}

/// Why an attempt failed, which decides whether it is retried automatically.
public enum FailureKind: String, Codable, Sendable {
    /// The item's inputs are at fault (bad file, no face): not retried automatically.
    case input
    /// Anything else (engine crash, timeout, bad output): retried with backoff up to a cap.
    case transient
}

/// The error an item's last failed attempt left.
public struct ItemError: Codable, Sendable, Equatable {
    /// Whether the input or the machinery was at fault.
    public var kind: FailureKind
    /// A message the user can act on.
    public var message: String

    /// Creates an item error.
    public init(kind: FailureKind, message: String) {
        self.kind = kind
        self.message = message
    }
}

/// Something that happens to an item; `ItemState.apply` turns it into the next state.
public enum ItemEvent: Sendable, Equatable {
    /// The runner hands the item to an engine (`pending → running`, one more attempt).
    case start
    /// The output was verified and moved into place (`running → success`).
    case succeed(output: String, settingsFingerprint: String)
    /// The attempt failed (`running → failed`).
    case fail(ItemError)
    /// The user stopped the batch mid-item (`running → pending`); the attempt is not charged.
    case stop
    /// Found `running` at start-up: the previous run died (`running → pending`, the attempt
    /// stays counted; past the cap it becomes `failed` so a poison item cannot loop forever).
    case interrupted(maxAttempts: Int)
    /// An automatic retry of a transient failure (`failed → pending`, attempts kept).
    case retryAutomatically
    /// The user asked to retry (`failed → pending`, attempts start again from zero).
    case retryByUser
    /// The user sets a pending or running item aside (`→ failed`, kind input, not retried).
    case skip
    /// A success is to be made again: other settings, or its output went missing
    /// (`success → pending`).
    case rerender(reason: String)
}

/// A transition the state machine does not allow; never a silent no-op.
public struct IllegalTransition: Error, Equatable, CustomStringConvertible {
    /// The state the item was in.
    public let from: ItemStatus
    /// The event that does not apply to it.
    public let event: ItemEvent

    public var description: String { "an item that is \(from.rawValue) cannot take \(event)" }
}

/// The state machine of one item: status, attempts and the last error, as a value.
public struct ItemState: Codable, Sendable, Equatable {
    /// Where the item is.
    public private(set) var status: ItemStatus
    /// Attempts since the item was created or the user last retried it.
    public private(set) var attempts: Int
    /// The error of the last failed attempt (kept after a retry, for the record).
    public private(set) var lastError: ItemError?
    /// The output file, relative to the output folder, once successful.
    public private(set) var output: String?
    /// The settings fingerprint that made the output.
    public private(set) var settingsFingerprint: String?

    /// A new item: pending, no attempts.
    public init() {
        self.init(status: .pending, attempts: 0)
    }

    /// A state as stored; used by decoders and imports.
    public init(status: ItemStatus, attempts: Int, lastError: ItemError? = nil,
                output: String? = nil, settingsFingerprint: String? = nil) {
        self.status = status
        self.attempts = attempts
        self.lastError = lastError
        self.output = output
        self.settingsFingerprint = settingsFingerprint
    }

    /// The state after `event`, or `IllegalTransition`.
    public func applying(_ event: ItemEvent) throws(IllegalTransition) -> ItemState {
        var next = self
        switch (status, event) {
        case (.pending, .start):
            next.status = .running
            next.attempts += 1
        case (.running, .succeed(let output, let fingerprint)):
            next.status = .success
            next.output = output
            next.settingsFingerprint = fingerprint
            next.lastError = nil
        case (.running, .fail(let error)):
            next.status = .failed
            next.lastError = error
        case (.running, .stop):
            next.status = .pending
            next.attempts = max(0, attempts - 1)
        case (.running, .interrupted(let maxAttempts)):
            if attempts >= maxAttempts {
                next.status = .failed
                next.lastError = ItemError(
                    kind: .transient,
                    message: "interrupted \(attempts) times while rendering (the program or machine died each time); run `talkie retry --failed` to try again")
            } else {
                next.status = .pending
            }
        case (.failed, .retryAutomatically):
            next.status = .pending
        case (.failed, .retryByUser):
            next.status = .pending
            next.attempts = 0
        case (.pending, .skip), (.running, .skip):
            next.status = .failed
            next.lastError = ItemError(kind: .input, message: "skipped by the user")
        case (.success, .rerender):
            next.status = .pending
            next.attempts = 0
        default:
            throw IllegalTransition(from: status, event: event)
        }
        return next
    }

    /// Applies `event` in place.
    public mutating func apply(_ event: ItemEvent) throws(IllegalTransition) {
        self = try applying(event)
    }
}
