import Foundation
import TalkieCore
import TalkieStore

/// Talkie's side-by-side benchmarks (see Benchmarks/run.sh, which runs them beside the
/// seed design's baseline in the same run):
///   talkie-bench prepare-restart DIR N SIZE_MIB   N sparse templates + a finished state for them
///   talkie-bench state-overhead DIR N             N items, each committed running then success
///   talkie-bench hash FILE ALGORITHM REPEAT       xxh3 or md5 throughput of one file
/// Prints JSON lines of results.

let arguments = CommandLine.arguments
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("talkie-bench: \(message)\n".utf8))
    exit(2)
}
if arguments.count == 5, arguments[1] == "hash", let repeats = Int(arguments[4]) {
    let size = Double((try FileManager.default.attributesOfItem(atPath: arguments[2])[.size] as? NSNumber)?.intValue ?? 0)
    var best = Double.infinity
    for _ in 0..<repeats {
        let start = ContinuousClock.now
        if arguments[3] == "md5" { _ = try FileHasher.md5(path: arguments[2]) } else { _ = try FileHasher.xxh3(path: arguments[2]) }
        let elapsed = ContinuousClock.now - start
        best = min(best, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }
    print("{\"algorithm\":\"\(arguments[3])\",\"gib_per_s\":\(size / best / 1_073_741_824)}")
    exit(0)
}
guard arguments.count >= 4, let count = Int(arguments[3]) else {
    fail("usage: talkie-bench prepare-restart DIR N SIZE_MIB | state-overhead DIR N")
}
let folder = arguments[2]

func report(_ fields: [String: JSONValue]) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    print(String(decoding: try! encoder.encode(fields), as: UTF8.self))
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
}

switch arguments[1] {
case "prepare-restart":
    // A finished batch of `count` templates (sparse files), as a run would have left it.
    guard arguments.count >= 5, let mebibytes = Int(arguments[4]) else { fail("prepare-restart needs SIZE_MIB") }
    let templates = folder + "/templates", outputs = folder + "/outputs"
    try FileManager.default.createDirectory(atPath: templates, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: outputs, withIntermediateDirectories: true)
    let audio = folder + "/narration.wav"
    let audioHash = try FileHasher.xxh3(path: audio)
    let store = try StateStore(folder: outputs)
    var items: [Item] = []
    var legacy: [String: [String: String]] = [:]
    for n in 0..<count {
        let path = String(format: "%@/template-%05d.mp4", templates, n)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        // A distinct first block, then a hole: distinct content at no disk cost.
        _ = "template \(n)".withCString { write(fd, $0, strlen($0)) }
        ftruncate(fd, off_t(mebibytes) << 20)
        close(fd)
        let key = ItemKey(video: try FileHasher.xxh3(path: path), audio: audioHash)
        let output = String(format: "template-%05d.out.mp4", n)
        _ = FileManager.default.createFile(atPath: outputs + "/" + output, contents: Data("x".utf8))
        var item = Item(key: key, names: [path], audioPath: audio, createdAt: Date())
        item.state = ItemState(status: .success, attempts: 1, output: output, settingsFingerprint: RenderSettings(engine: "test").fingerprint)
        items.append(item)
        legacy[try FileHasher.md5(path: path)] = ["status": "success", "output": output]
    }
    try store.commit(items, batch: BatchInputs(audio: audio, videos: [templates], settings: RenderSettings(engine: "test")))
    try store.compact()
    store.close()
    // The same finished batch in the seed's format, for the baseline.
    try JSONSerialization.data(withJSONObject: legacy, options: [.prettyPrinted]).write(to: URL(fileURLWithPath: folder + "/seed_status.json"))
    report(["prepared": .number(Double(count)), "size_mib": .number(Double(mebibytes))])

case "state-overhead":
    // Every item goes pending → running → success, each change durable before the next.
    try? FileManager.default.removeItem(atPath: folder)
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let store = try StateStore(folder: folder)
    var items: [Item] = (0..<count).map { n in
        Item(key: ItemKey(video: ContentHash(high: UInt64(n), low: 1), audio: ContentHash(high: 2, low: 2)),
             names: ["/templates/t\(n).mp4"], audioPath: "/narration.wav", createdAt: Date())
    }
    try store.commit(items)
    var perItem: [Double] = []
    let clock = ContinuousClock()
    let total = try clock.measure {
        for index in items.indices {
            let start = clock.now
            try items[index].state.apply(.start)
            try store.commit([items[index]])
            try items[index].state.apply(.succeed(output: "t\(index).mp4", settingsFingerprint: "f"))
            try store.commit([items[index]])
            let elapsed = clock.now - start
            perItem.append(Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
        }
        try store.compact()
    }
    store.close()
    let seconds = Double(total.components.seconds) + Double(total.components.attoseconds) / 1e18
    report(["items": .number(Double(count)), "total_s": .number(seconds),
            "per_item_ms_mean": .number(seconds * 1000 / Double(count)),
            "per_item_ms_p50": .number(percentile(perItem, 0.5)), "per_item_ms_p99": .number(percentile(perItem, 0.99)),
            "generations": .number(Double(store.generation))])

default:
    fail("unknown benchmark \(arguments[1])")
}
