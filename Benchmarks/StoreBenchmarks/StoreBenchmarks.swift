import Benchmark
import Foundation
import TalkieCore
import TalkieStore

/// In-process measurements of Talkie's store, run by `swift package benchmark` (ordo-one/benchmark),
/// which reports percentiles over iterations:
/// - identity hashing: XXH3-128 of each file in $TALKIE_BENCH_HASH_FILES (colon-separated),
///   one iteration per file set, page cache warm;
/// - durable state per item at N items ($TALKIE_BENCH_ITEMS, comma-separated, default
///   100,1000,10000,100000): one iteration is one item going running → success, each change
///   appended to the journal and fdatasync'ed, the periodic compactions included where they fall.
/// $TALKIE_BENCH_WORK is the scratch folder (default /tmp/talkie-store-bench).
let benchmarks: @Sendable () -> Void = {
    let environment = ProcessInfo.processInfo.environment
    let work = environment["TALKIE_BENCH_WORK"] ?? "/tmp/talkie-store-bench"
    let quick = environment["TALKIE_BENCH_QUICK"] == "1"

    if let files = environment["TALKIE_BENCH_HASH_FILES"], !files.isEmpty {
        let paths = files.split(separator: ":").map(String.init)
        Benchmark(
            "hash xxh3-128 \(paths.count) files",
            configuration: .init(metrics: [.wallClock, .peakMemoryResident], timeUnits: .milliseconds,
                                 warmupIterations: 1, maxDuration: .seconds(quick ? 2 : 30),
                                 maxIterations: quick ? 3 : 10)
        ) { benchmark in
            for path in paths {
                blackHole(try FileHasher.xxh3(path: path))
            }
        }
    }

    let counts = (environment["TALKIE_BENCH_ITEMS"] ?? "100,1000,10000,100000").split(separator: ",").compactMap { Int($0) }
    for count in counts {
        let fixture = StateFixture(folder: "\(work)/state-\(count)", count: count)
        Benchmark(
            "state per item at \(count) items",
            configuration: .init(metrics: [.wallClock, .peakMemoryResident], timeUnits: .microseconds,
                                 warmupIterations: 0, maxDuration: .seconds(quick ? 2 : 20),
                                 // One item per iteration, and no item twice.
                                 maxIterations: min(count, quick ? 200 : 5_000)),
            closure: { _ in try fixture.renderNext() },
            setup: { try fixture.open() },
            teardown: { fixture.close() }
        )
    }
}

/// A store holding `count` pending items; each iteration takes the next one through
/// running → success, as the runner does, with both changes durable.
final class StateFixture: @unchecked Sendable {  // used by one benchmark thread at a time
    let folder: String
    let count: Int
    private var store: StateStore?
    private var items: [Item] = []
    private var next = 0

    init(folder: String, count: Int) {
        self.folder = folder
        self.count = count
    }

    func open() throws {
        try? FileManager.default.removeItem(atPath: folder)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let store = try StateStore(folder: folder)
        items = (0..<count).map { n in
            Item(key: ItemKey(video: ContentHash(high: UInt64(n), low: 1), audio: ContentHash(high: 2, low: 2)),
                 names: ["/templates/template-\(n).mp4"], audioPath: "/narration.wav", createdAt: Date())
        }
        try store.commit(items)
        try store.compact()
        self.store = store
        next = 0
    }

    func renderNext() throws {
        guard let store, next < items.count else { throw CancellationError() }
        try items[next].state.apply(.start)
        try store.commit([items[next]])
        try items[next].state.apply(.succeed(output: "template-\(next).out.mp4", settingsFingerprint: "bench"))
        try store.commit([items[next]])
        next += 1
    }

    func close() {
        store?.close()
        store = nil
        try? FileManager.default.removeItem(atPath: folder)
    }
}
