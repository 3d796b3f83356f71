import ArgumentParser
import Foundation

/// Entry point: parses the command line and maps errors to the documented exit codes
/// (0 all done, 1 some items failed, 2 bad arguments or unusable workspace, 3 interrupted).
@main
enum Main {
    static func main() async {
        do {
            var command = try Talkie.parseAsRoot()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            if Talkie.exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((Talkie.fullMessage(for: error) + "\n").utf8))
                exit(ExitStatus.badInput)
            }
            Talkie.exit(withError: error)
        }
    }
}

/// The exit codes a script can act on.
enum ExitStatus {
    static let done: Int32 = 0
    static let someFailed: Int32 = 1
    static let badInput: Int32 = 2
    static let interrupted: Int32 = 3
}

/// `talkie`: batch lip-sync video generation that never loses finished work.
struct Talkie: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "talkie",
        abstract: "Batch lip-sync: one narration, many template videos, one lip-synced video per template.",
        discussion: """
        Every item is a small state machine kept in OUT/task_status.json. Kill the
        run, pull the power, press Ctrl-C: run the same command again and only the
        rest renders.

        Examples:
          talkie run --audio narration.wav --videos templates/ --out outputs/
          talkie run --out outputs/ --engine wav2lip --param model=w2l.onnx --gpus 0,1
          talkie status --out outputs/
          talkie retry --out outputs/ --failed
          talkie run --out outputs/ --tempo 1.1     (new settings: successes stay)
          talkie retry --out outputs/ --all-with-other-settings
          talkie reset --out outputs/ --yes
          talkie demo        (sample inputs, rendered)
          talkie engines     (what can render, and what each needs)
          talkie doctor      (what is missing, and the fix)

        Cluster mode (many machines, one batch in PostgreSQL; see README "Cluster"):
          talkie run --store postgres://talkie@db/talkie --out /shared/out --audio /shared/n.wav --videos /shared/templates
          talkie worker --store postgres://talkie@db/talkie --gpus 0,1     (on every GPU machine)
          talkie status --store postgres://talkie@db/talkie

        Exit codes: 0 all done, 1 some items failed, 2 bad arguments or unusable
        workspace, 3 interrupted (run the same command again to continue).
        """,
        version: version,
        subcommands: [Run.self, Status.self, Retry.self, Reset.self, Serve.self, Demo.self, Engines.self, Doctor.self,
                      Worker.self, Pause.self, Stop.self, StoreCommand.self]
    )
}
