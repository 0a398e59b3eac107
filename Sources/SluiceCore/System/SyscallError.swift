// Path: Sources/SluiceCore/System/SyscallError.swift — typed failures of system calls.
import SystemPackage

/// A failed system call: which operation and the errno it left.
public struct SyscallError: Error, Equatable, CustomStringConvertible {
    public let operation: String
    public let errno: Errno

    public init(_ operation: String, _ errno: Errno) {
        self.operation = operation
        self.errno = errno
    }

    /// Builds the error from a CShims return value, which carries `-errno` (the liburing convention).
    public init(_ operation: String, negatedErrno rc: Int32) {
        precondition(rc < 0, "only failures carry an errno")
        self.init(operation, Errno(rawValue: -rc))
    }

    public var description: String { "\(operation): \(errno) (errno \(errno.rawValue))" }
}
