import ArgumentParser
import Foundation
import TalkieCore
import TalkieRunner

/// Options every command that runs a batch shares.
struct BatchOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The output folder: outputs, task_status.json, talkie.log.", valueName: "folder"))
    var out: String

    @Option(name: .long, help: ArgumentHelp("Engine: classic (built-in, CPU), wav2lip, face2face, command or test; see `talkie engines`. Default: the batch's, else classic.", valueName: "name"))
    var engine: String?

    @Option(name: .customLong("param"), help: ArgumentHelp("An engine parameter, name=value (repeatable).", valueName: "name=value"))
    var params: [String] = []

    @Option(name: .long, help: ArgumentHelp("Audio denoise strength, 0 (off) to 1.", valueName: "0..1"))
    var denoise: Double?

    @Option(name: .long, help: ArgumentHelp("Audio tempo (speed without pitch change), 0.5 to 2.", valueName: "factor"))
    var tempo: Double?

    @Option(name: .long, help: ArgumentHelp("Engine workers at once (on a CPU, or GPUs the engine picks itself).", valueName: "n"))
    var slots: Int = 1

    @Option(name: .long, help: ArgumentHelp("Render on these GPUs, one engine worker each (CUDA_VISIBLE_DEVICES), e.g. 0,1,3.", valueName: "list"))
    var gpus: String?

    @Option(name: .long, help: ArgumentHelp("Attempts per item before a transient failure is final.", valueName: "n"))
    var maxAttempts: Int = 3

    @Option(name: .long, help: ArgumentHelp("Seconds before the first automatic retry (doubles each time).", valueName: "seconds"))
    var retryDelay: Double = 2

    @Option(name: .long, help: ArgumentHelp("A fixed per-item timeout. Default: 2 min + 1 min per second of narration.", valueName: "seconds"))
    var itemTimeout: Double?

    @Flag(name: .long, help: "Save a contact sheet (frames over the audio envelope) beside each output.")
    var contactSheet = false

    @Flag(name: .long, help: "Print one JSON event per line (for scripts).")
    var json = false

    @Option(name: .long, help: ArgumentHelp("Cluster mode: queue the batch in this PostgreSQL database for `talkie worker`s on any machine, postgres://USER@HOST[:PORT]/DATABASE; --out and the inputs must be on storage every machine sees at the same path.", valueName: "url"))
    var store: String?

    @Option(name: .long, help: ArgumentHelp("Cluster mode: seconds a worker's claim lives without a heartbeat; then its item is taken again.", valueName: "seconds"))
    var leaseSeconds: Double = 30

    @Flag(name: .long, help: "Cluster mode: return once the batch is queued instead of following it to its end.")
    var detach = false

    func validate() throws {
        try validateEngineWorkers(slots: slots, gpus: gpus)
        guard maxAttempts >= 1 else { throw ValidationError("--max-attempts must be at least 1") }
        guard retryDelay >= 0 else { throw ValidationError("--retry-delay cannot be negative") }
        if let itemTimeout, itemTimeout <= 0 { throw ValidationError("--item-timeout must be positive") }
        if store != nil, slots != 1 || gpus != nil {
            throw ValidationError("with --store the workers render: give --slots/--gpus to `talkie worker` on each machine")
        }
        guard leaseSeconds >= 1 else { throw ValidationError("--lease-seconds must be at least 1") }
        if detach && store == nil { throw ValidationError("--detach is for cluster mode (--store)") }
        try validateParams(params)
        let problems = overrides.applied(to: RenderSettings()).problems()
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "; ")) }
    }

    var overrides: SettingsOverrides {
        SettingsOverrides(engine: engine, engineParams: engineParams(params), denoise: denoise, tempo: tempo)
    }

    func configuration(audio: String?, videos: [String], retry: RetryRequest?) -> RunConfiguration {
        var config = RunConfiguration(
            outputs: URL(fileURLWithPath: out).standardizedFileURL.path, audio: audio, videos: videos,
            settings: overrides, slots: slots,
            retryPolicy: RetryPolicy(maxAttempts: maxAttempts, initialDelay: retryDelay),
            itemTimeout: itemTimeout, retry: retry, contactSheets: contactSheet)
        config.gpus = gpus.map(gpuList) ?? []
        return config
    }
}

/// Checks `--slots` and `--gpus` (of `talkie run` and `talkie worker`): one or the other,
/// within bounds, every GPU a valid entry once.
func validateEngineWorkers(slots: Int, gpus: String?) throws {
    guard slots >= 1 && slots <= 64 else { throw ValidationError("--slots must be between 1 and 64") }
    if let gpus {
        guard slots == 1 else { throw ValidationError("give --gpus or --slots, not both: --gpus starts one worker per GPU") }
        if let problem = RunConfiguration.gpuListProblem(gpuList(gpus)) { throw ValidationError(problem) }
    }
}

/// `0,1, 3` → ["0", "1", "3"].
func gpuList(_ text: String) -> [String] {
    if text.trimmingCharacters(in: .whitespaces).isEmpty { return [] }
    return text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
}

/// Checks that every `--param` looks like name=value.
func validateParams(_ params: [String]) throws {
    for param in params where !param.contains("=") || param.hasPrefix("=") {
        throw ValidationError("--param '\(param)' must look like name=value")
    }
}

/// `--param name=value` options as engine parameters (numbers and booleans typed).
func engineParams(_ params: [String]) -> [String: JSONValue] {
    var result: [String: JSONValue] = [:]
    for param in params {
        let parts = param.split(separator: "=", maxSplits: 1).map(String.init)
        result[parts[0]] = JSONValue(parsing: parts.count > 1 ? parts[1] : "")
    }
    return result
}
