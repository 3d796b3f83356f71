import TalkieCore

/// Runs a batch until it ends or is told to stop; shared by the CLI (signals) and the
/// studio (the Stop button, server shutdown).
public enum BatchSupervisor {
    /// Runs `runner` to its end. The first element of `stopRequests` stops it now: the
    /// running items return to pending and the run still ends with its summary (interrupted).
    public static func run(_ runner: BatchRunner, stopRequests: AsyncStream<Void>) async -> Result<BatchSummary, any Error> {
        await withTaskGroup(of: Result<BatchSummary, any Error>?.self) { group in
            group.addTask {
                do { return .success(try await runner.run()) } catch { return .failure(error) }
            }
            group.addTask {
                var requests = stopRequests.makeAsyncIterator()
                _ = await requests.next()  // a stop request, or cancellation once the run ended
                return nil
            }
            var outcome: Result<BatchSummary, any Error>?
            while outcome == nil, let next = await group.next() {
                // The run's result, or a stop request: either way the other task is cancelled
                // (cancelling the run is how it stops its items).
                group.cancelAll()
                outcome = next
            }
            return outcome ?? .failure(CancellationError())
        }
    }
}
