import Foundation
import PostgresNIO
import TalkieCore
import TalkieStore

/// How fast a cluster's database hands out work: `workers` claimers, each with its own
/// connection, claim and commit synthetic items with no engine at all (what a cluster costs
/// per item beyond rendering). Runs in a database that holds no Talkie items, and leaves it so.
public enum ClaimBenchmark {
    /// One measurement.
    public struct Result: Codable, Sendable, Equatable {
        /// Concurrent claimers.
        public var workers: Int
        /// Items claimed and committed.
        public var items: Int
        /// Wall time for all of them.
        public var seconds: Double
        /// Items claimed and committed per second.
        public var itemsPerSecond: Double
        /// Claim latency, median and 99th percentile, in milliseconds.
        public var claimP50: Double
        /// See `claimP50`.
        public var claimP99: Double
        /// Commit (finish under the lease) latency, median and 99th percentile, in milliseconds.
        public var commitP50: Double
        /// See `commitP50`.
        public var commitP99: Double
        /// Items claimed twice (must be 0).
        public var duplicates: Int
    }

    /// Measures `items` items over `workers` claimers.
    public static func run(_ store: ClusterStore, workers: Int, items: Int) async throws -> Result {
        _ = try await ClusterSchema.migrate(store.database)
        guard try await store.items().isEmpty else {
            throw ClusterError(code: "cluster.not_empty", message: "the database at \(store.database.displayURL) holds a batch; run the benchmark on an empty database (createdb talkie_bench)")
        }
        let audio = ContentHash(high: 7, low: 7)
        var synthetic: [Item] = []
        for index in 0..<items {
            synthetic.append(Item(key: ItemKey(video: ContentHash(high: 0xbe7c, low: UInt64(index)), audio: audio),
                                  names: ["/bench/template-\(index).mp4"], audioPath: "/bench/narration.wav", createdAt: Date()))
        }
        var policy = ClusterPolicy()
        policy.leaseSeconds = 300
        try await store.submit(changed: synthetic, batchKeys: synthetic.map(\.key),
                               inputs: BatchInputs(audio: "/bench/narration.wav", videos: ["/bench"], settings: RenderSettings()),
                               outputs: "/bench/out", policy: policy)
        let clock = ContinuousClock()
        let started = clock.now
        let samples = try await withThrowingTaskGroup(of: ([Double], [Double], [ItemKey]).self) { group in
            for worker in 0..<workers {
                group.addTask {
                    var claims: [Double] = [], commits: [Double] = [], keys: [ItemKey] = []
                    while true {
                        let before = clock.now
                        guard let claim = try await store.claim(owner: "bench-\(worker)", device: nil) else { break }
                        claims.append(milliseconds(clock.now - before))
                        var item = claim.item
                        try item.state.apply(.succeed(output: "bench.mp4", settingsFingerprint: "bench"))
                        let committing = clock.now
                        _ = try await store.finish(item, lease: claim.lease,
                                                   event: .itemSucceeded(key: item.key, name: "bench", output: "bench.mp4", seconds: 0, score: nil))
                        commits.append(milliseconds(clock.now - committing))
                        keys.append(item.key)
                    }
                    return (claims, commits, keys)
                }
            }
            var all: ([Double], [Double], [ItemKey]) = ([], [], [])
            for try await part in group {
                all.0 += part.0
                all.1 += part.1
                all.2 += part.2
            }
            return all
        }
        let seconds = milliseconds(clock.now - started) / 1000
        _ = try await store.reset()
        return Result(workers: workers, items: samples.2.count, seconds: seconds, itemsPerSecond: Double(samples.2.count) / seconds,
                      claimP50: percentile(samples.0, 0.5), claimP99: percentile(samples.0, 0.99),
                      commitP50: percentile(samples.1, 0.5), commitP99: percentile(samples.1, 0.99),
                      duplicates: samples.2.count - Set(samples.2).count)
    }

    private static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    /// Nearest-rank percentile.
    static func percentile(_ values: [Double], _ fraction: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let rank = Int((fraction * Double(sorted.count)).rounded(.up))
        return sorted[min(sorted.count - 1, max(0, rank - 1))]
    }
}
