import ArgumentParser
import Foundation
import TalkieCore
import TalkieRunner

/// `talkie engines`: what can render, and what each engine needs.
struct Engines: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the engines, whether each is installed here, and what each needs.",
        discussion: """
        Choose one with `talkie run --engine NAME --param name=value ...`; check
        that it starts with `talkie doctor --engine NAME --param ...`. Any program
        that speaks the worker protocol (docs/engine-protocol.md) can be an engine;
        the `command` engine runs a plain command line without one.
        """)

    @Flag(name: .long, help: "Print JSON (for scripts).")
    var json = false

    func run() async throws {
        let catalog = EngineCatalog.installed()
        var rows: [[String: JSONValue]] = []
        for engine in EngineCatalog.engines {
            let problem = catalog.problem(with: engine)
            if json {
                rows.append(["name": .string(engine.name), "summary": .string(engine.summary), "installed": .bool(problem == nil),
                             "problem": problem.map { .string($0.message) } ?? .null,
                             "required_params": .array(engine.requiredParams.map { .string($0) }),
                             "needs": .string(engine.needs), "documentation": .string(engine.documentation)])
                continue
            }
            print("\(engine.name)\(engine.name == "classic" ? " (default)" : "")  \(problem == nil ? "installed" : "NOT INSTALLED: \(problem!.message)")")
            print("    \(engine.summary)")
            print("    needs: \(engine.needs)")
            print("    docs:  \(engine.documentation)")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
            print(String(decoding: try encoder.encode(rows), as: UTF8.self))
        }
    }
}

/// `talkie doctor`: the installation's checks and a start of the chosen engine.
struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that everything Talkie needs is installed; say what is missing and how to fix it.",
        discussion: """
        Checks ffmpeg, espeak-ng, the engine Python environment and the GPUs, then
        starts the chosen engine the way a run would (with its model, service or
        command line) and waits for its handshake. Examples:
          talkie doctor
          talkie doctor --engine wav2lip --param model=/models/wav2lip_gan_96.onnx
          talkie doctor --engine face2face --param url=http://127.0.0.1:8383 \\
                        --param share=/srv/heygem
        """)

    @Option(name: .long, help: ArgumentHelp("The engine to check (see `talkie engines`).", valueName: "name"))
    var engine = "classic"

    @Option(name: .customLong("param"), help: ArgumentHelp("An engine parameter, name=value (repeatable), as for `talkie run`.", valueName: "name=value"))
    var params: [String] = []

    func validate() throws {
        guard EngineCatalog.description(of: engine) != nil else {
            throw ValidationError("unknown engine '\(engine)'; known engines: \(EngineCatalog.names.joined(separator: ", "))")
        }
        try validateParams(params)
    }

    func run() async throws {
        let checks = await TalkieRunner.Doctor(engines: .installed(), engine: engine, params: engineParams(params)).run()
        for check in checks {
            print("\(check.ok ? "ok  " : "FAIL") \(check.name): \(check.detail)")
            if !check.ok, let fix = check.fix { print("     fix: \(fix)") }
        }
        let failed = checks.filter { !$0.ok }.count
        print(failed == 0 ? "Everything Talkie needs is here." : "\(failed) problem(s) found.")
        if failed > 0 { throw ExitCode(ExitStatus.badInput) }
    }
}
