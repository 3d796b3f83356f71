import Dispatch
import Foundation

/// Turns signals into an async sequence instead of letting them kill the process, so a stop
/// can end the current item cleanly.
final class SignalWatcher: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]
    /// The signals received, in order.
    let stream: AsyncStream<Int32>
    private let lock = NSLock()
    private var exitCode: Int32?

    init(_ signals: [Int32]) {
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        self.stream = stream
        var sources: [any DispatchSourceSignal] = []
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            sources.append(source)
        }
        self.sources = sources
        for (source, number) in zip(sources, signals) {
            source.setEventHandler { [weak self] in
                if let code = self?.pendingExit() { exit(code) }
                continuation.yield(number)
            }
            source.resume()
        }
    }

    deinit { for source in sources { source.cancel() } }

    /// A second signal ends the process at once with `code`.
    func exitOnNextSignal(_ code: Int32) {
        lock.withLock { exitCode = code }
    }

    private func pendingExit() -> Int32? { lock.withLock { exitCode } }
}
