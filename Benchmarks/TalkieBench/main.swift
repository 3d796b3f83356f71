import Foundation
import TalkieCore
import TalkieStore

/// Whole-command helpers for the side-by-side benchmarks (Benchmarks/run.py times them
/// with hyperfine beside their baselines):
///   talkie-bench hash-files FILE...             Talkie's identity hash (XXH3-128) of each file
///   talkie-bench prepare-restart DIR N SIZE_MIB N sparse templates + a finished state for them

let arguments = CommandLine.arguments
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("talkie-bench: \(message)\n".utf8))
    exit(2)
}
if arguments.count >= 3, arguments[1] == "hash-files" {
    // One line per file, as xxhsum and md5sum print them, so the three do the same work.
    for path in arguments.dropFirst(2) {
        do { print("\(try FileHasher.xxh3(path: path).hex)  \(path)") } catch { fail("\(error)") }
    }
    exit(0)
}
guard arguments.count >= 4, let count = Int(arguments[3]) else {
    fail("usage: talkie-bench hash-files FILE... | prepare-restart DIR N SIZE_MIB")
}
let folder = arguments[2]

func report(_ fields: [String: JSONValue]) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    print(String(decoding: try! encoder.encode(fields), as: UTF8.self))
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

default:
    fail("unknown benchmark \(arguments[1])")
}
