/// When a failed attempt is tried again, and after how long.
///
/// Transient failures (engine crash, timeout, a bad output) are retried with exponential
/// backoff until `maxAttempts`; input failures are never retried automatically.
public struct RetryPolicy: Sendable, Equatable, Codable {
    /// Attempts an item gets before it stays failed.
    public var maxAttempts: Int
    /// Seconds to wait before the first retry.
    public var initialDelay: Double
    /// Factor applied to the delay after each retry.
    public var multiplier: Double
    /// The longest wait.
    public var maxDelay: Double

    /// Creates a policy.
    public init(maxAttempts: Int = 3, initialDelay: Double = 2, multiplier: Double = 2, maxDelay: Double = 60) {
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
    }

    /// Whether an item that failed with `kind` after `attempts` attempts goes back to the queue.
    public func shouldRetry(_ kind: FailureKind, attempts: Int) -> Bool {
        kind == .transient && attempts < maxAttempts
    }

    /// Seconds to wait before attempt number `attempts + 1`.
    public func delay(afterAttempt attempts: Int) -> Double {
        var delay = initialDelay
        for _ in 1..<max(1, attempts) { delay *= multiplier }
        return min(delay, maxDelay)
    }
}
