import ArgumentParser
import Foundation
import TalkieCore
import TalkieRunner

/// Options every command that runs a batch shares.
struct BatchOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The output folder: outputs, task_status.json, talkie.log.", valueName: "folder"))
    var out: String

    @Option(name: .long, help: ArgumentHelp("Engine: classic (built-in, CPU) or test. Default: the batch's, else classic.", valueName: "name"))
    var engine: String?

    @Option(name: .customLong("param"), help: ArgumentHelp("An engine parameter, name=value (repeatable).", valueName: "name=value"))
    var params: [String] = []

    @Option(name: .long, help: ArgumentHelp("Audio denoise strength, 0 (off) to 1.", valueName: "0..1"))
    var denoise: Double?

    @Option(name: .long, help: ArgumentHelp("Audio tempo (speed without pitch change), 0.5 to 2.", valueName: "factor"))
    var tempo: Double?

    @Option(name: .long, help: ArgumentHelp("Engine workers at once, one per GPU.", valueName: "n"))
    var slots: Int = 1

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

    func validate() throws {
        guard slots >= 1 && slots <= 64 else { throw ValidationError("--slots must be between 1 and 64") }
        guard maxAttempts >= 1 else { throw ValidationError("--max-attempts must be at least 1") }
        guard retryDelay >= 0 else { throw ValidationError("--retry-delay cannot be negative") }
        if let itemTimeout, itemTimeout <= 0 { throw ValidationError("--item-timeout must be positive") }
        for param in params where !param.contains("=") || param.hasPrefix("=") {
            throw ValidationError("--param '\(param)' must look like name=value")
        }
        let problems = overrides.applied(to: RenderSettings()).problems()
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "; ")) }
    }

    var overrides: SettingsOverrides {
        var params: [String: JSONValue] = [:]
        for param in self.params {
            let parts = param.split(separator: "=", maxSplits: 1).map(String.init)
            params[parts[0]] = JSONValue(parsing: parts.count > 1 ? parts[1] : "")
        }
        return SettingsOverrides(engine: engine, engineParams: params, denoise: denoise, tempo: tempo)
    }

    func configuration(audio: String?, videos: [String], retry: RetryRequest?) -> RunConfiguration {
        RunConfiguration(
            outputs: URL(fileURLWithPath: out).standardizedFileURL.path, audio: audio, videos: videos,
            settings: overrides, slots: slots,
            retryPolicy: RetryPolicy(maxAttempts: maxAttempts, initialDelay: retryDelay),
            itemTimeout: itemTimeout, retry: retry, contactSheets: contactSheet)
    }
}
