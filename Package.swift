// swift-tools-version: 6.2
import PackageDescription

/// Nonisolated async functions run on their caller's actor (SE-0461), so an actor can hand
/// its closures to engine and media helpers without making them Sendable.
let settings: [SwiftSetting] = [.enableUpcomingFeature("NonisolatedNonsendingByDefault")]

let package = Package(
    name: "talkie",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "talkie", targets: ["talkie"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
    ],
    targets: [
        // Debian's libxxhash-dev (XXH3-128), reached through a module map.
        .systemLibrary(
            name: "CXXHash",
            pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]
        ),
        // Pure domain: keys, items, the state machine, settings, events. No I/O.
        .target(name: "TalkieCore", swiftSettings: settings),
        // Durable state: journal + snapshot, recovery, hashing, hash cache, lock.
        .target(name: "TalkieStore", dependencies: ["TalkieCore", "CXXHash"], swiftSettings: settings),
        // ffprobe/ffmpeg: probe, validate, audio preprocessing, stamp + verify outputs.
        .target(name: "TalkieMedia", dependencies: [
            "TalkieCore",
            .product(name: "Subprocess", package: "swift-subprocess"),
        ], swiftSettings: settings),
        // The worker protocol and worker process supervision.
        .target(name: "TalkieEngine", dependencies: [
            "TalkieCore",
            .product(name: "Subprocess", package: "swift-subprocess"),
        ], swiftSettings: settings),
        // The batch runner: reconcile, schedule, retry, events.
        .target(name: "TalkieRunner", dependencies: [
            "TalkieCore", "TalkieStore", "TalkieMedia", "TalkieEngine",
        ], swiftSettings: settings),
        .executableTarget(name: "talkie", dependencies: [
            "TalkieRunner",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: settings),
        .executableTarget(
            name: "talkie-bench",
            dependencies: ["TalkieRunner"],
            path: "Benchmarks/TalkieBench",
            swiftSettings: settings
        ),
        .testTarget(name: "TalkieCoreTests", dependencies: ["TalkieCore"], swiftSettings: settings),
        .testTarget(name: "TalkieStoreTests", dependencies: ["TalkieStore"], swiftSettings: settings),
        .testTarget(name: "TalkieRunnerTests", dependencies: [
            "TalkieRunner",
            .product(name: "Subprocess", package: "swift-subprocess"),
        ], swiftSettings: settings),
    ]
)
