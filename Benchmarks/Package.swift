// swift-tools-version: 6.2
import PackageDescription

/// Talkie's benchmarks, a package of their own so that a user's build of Talkie never builds
/// the benchmark harness. `scripts/bench.sh` runs them all and writes BENCHMARKS.md.
let package = Package(
    name: "talkie-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "talkie", path: ".."),
        // ordo-one/benchmark: in-process measurements with percentiles. Only the malloc
        // interposer trait: the runtime interposer is a package this machine's mirror lacks.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // Whole-command helpers that hyperfine times: hashing files, preparing a finished batch.
        .executableTarget(
            name: "talkie-bench",
            dependencies: [.product(name: "TalkieStore", package: "talkie")],
            path: "TalkieBench"
        ),
        // In-process: XXH3 identity hashing, and the durable state's cost per item at N items.
        .executableTarget(
            name: "StoreBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TalkieStore", package: "talkie"),
            ],
            path: "StoreBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
