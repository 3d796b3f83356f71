import Foundation
import Synchronization

/// Fans messages out to every connected page. A slow page keeps only its newest 2,000
/// messages (it resyncs from the next snapshot), so it can never grow the server's memory.
final class Broadcaster: Sendable {
    private let subscribers = Mutex<[UUID: AsyncStream<String>.Continuation]>([:])

    /// A stream of every message published from now on, ended by `unsubscribe`.
    func subscribe() -> (id: UUID, messages: AsyncStream<String>) {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(2_000))
        let id = UUID()
        subscribers.withLock { $0[id] = continuation }
        return (id, stream)
    }

    func unsubscribe(_ id: UUID) {
        subscribers.withLock { $0.removeValue(forKey: id) }?.finish()
    }

    func publish(_ message: String) {
        for continuation in subscribers.withLock({ Array($0.values) }) { continuation.yield(message) }
    }

    var count: Int { subscribers.withLock { $0.count } }
}
