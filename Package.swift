// swift-tools-version: 6.2
import PackageDescription

/// Nonisolated async functions run on their caller's actor (SE-0461). Closures a helper
/// calls from inside a task group or cancellation handler do not: those are `@Sendable` and
/// touch no actor state (EngineSession.render's progress crashed the runner before it was).
let settings: [SwiftSetting] = [.enableUpcomingFeature("NonisolatedNonsendingByDefault")]

let package = Package(
    name: "talkie",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "talkie", targets: ["talkie"]),
        // For Benchmarks/, a package of its own that measures these in process.
        .library(name: "TalkieCore", targets: ["TalkieCore"]),
        .library(name: "TalkieStore", targets: ["TalkieStore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // Debian's libxxhash-dev (XXH3-128), reached through a module map.
        .systemLibrary(
            name: "CXXHash",
            pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]
        ),
        // zlib's crc32, for the streamed zip of all outputs.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // Pure domain: keys, items, the state machine, settings, events. No I/O.
        .target(name: "TalkieCore", swiftSettings: settings),
        // Durable state: journal + snapshot, recovery, hashing, hash cache, lock.
        .target(name: "TalkieStore", dependencies: ["TalkieCore", "CXXHash"], swiftSettings: settings),
        // Child processes (posix_spawn), ffprobe/ffmpeg: probe, validate, audio preprocessing, stamp + verify.
        .target(name: "TalkieMedia", dependencies: ["TalkieCore"], swiftSettings: settings),
        // The worker protocol and worker process supervision.
        .target(name: "TalkieEngine", dependencies: ["TalkieCore", "TalkieMedia"], swiftSettings: settings),
        // The batch runner: reconcile, schedule, retry, events.
        .target(name: "TalkieRunner", dependencies: [
            "TalkieCore", "TalkieStore", "TalkieMedia", "TalkieEngine",
        ], swiftSettings: settings),
        // Cluster mode: the batch's items in PostgreSQL, claimed under leases by workers on
        // many machines; schema migrations, export and import.
        .target(name: "TalkieCluster", dependencies: [
            "TalkieRunner",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: settings),
        // The studio: HTTP API, WebSocket, uploads, downloads, the page (web/).
        .target(name: "TalkieServer", dependencies: [
            "TalkieRunner", "TalkieCluster", "CZlib",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
        ]),  // Hummingbird's middleware protocol expects today's default isolation.
        .executableTarget(name: "talkie", dependencies: [
            "TalkieRunner", "TalkieServer", "TalkieCluster",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: settings),
        .testTarget(name: "TalkieCoreTests", dependencies: ["TalkieCore"], swiftSettings: settings),
        .testTarget(name: "TalkieStoreTests", dependencies: ["TalkieStore"], swiftSettings: settings),
        .testTarget(name: "TalkieServerTests", dependencies: [
            "TalkieServer", "TalkieMedia", "TalkieStore",
            .product(name: "HummingbirdTesting", package: "hummingbird"),
            .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
        ], swiftSettings: settings),
        .testTarget(name: "TalkieRunnerTests", dependencies: ["TalkieRunner"], swiftSettings: settings),
        .testTarget(name: "TalkieClusterTests", dependencies: [
            "TalkieCluster", .product(name: "PostgresNIO", package: "postgres-nio"),
        ], swiftSettings: settings),
    ]
)
