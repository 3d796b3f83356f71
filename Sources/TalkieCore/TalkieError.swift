/// An error a user can act on: a stable code for scripts and a message for people.
public protocol TalkieError: Error, CustomStringConvertible {
    /// A short stable identifier, such as `store.locked`.
    var code: String { get }
    /// What went wrong and what to do about it.
    var message: String { get }
}

extension TalkieError {
    public var description: String { "\(message) [\(code)]" }
}
