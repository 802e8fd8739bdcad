//! The finding type shared by all checks.

use std::fmt;

/// What kind of problem a finding reports.
///
/// The string forms returned by [`Category::as_str`] are part of the public contract: the server
/// passes them to clients unchanged, so they never change once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Category {
    /// A path resolves outside every allowed root.
    OutsideRoots,
    /// A path lexically inside the roots escapes them through a symbolic link.
    SymlinkEscape,
    /// A path names a file that commonly holds secrets.
    SensitivePath,
    /// Recursive deletion of the root, a system directory or the home directory.
    DestructiveDelete,
    /// A shell fork bomb.
    ForkBomb,
    /// Creating a file system or wiping a partition table.
    DiskFormat,
    /// Writing raw data to a block device.
    DiskOverwrite,
    /// Downloaded content executed by a shell or interpreter.
    RemoteCodeExecution,
    /// Decoded (base64, hex) content executed by a shell or interpreter.
    ObfuscatedExecution,
    /// World-writable permissions or ownership changes on system paths.
    PermissionWeakening,
    /// Reading files that commonly hold credentials or keys.
    CredentialAccess,
    /// Reading shell history files.
    HistoryAccess,
    /// Secrets, history or the environment sent to the network.
    Exfiltration,
    /// Text that tells the model to ignore its previous instructions.
    InstructionOverride,
    /// Text that tells the model to adopt an unrestricted persona.
    RolePlay,
    /// Text that asks the model to reveal its system prompt.
    SystemPromptRequest,
    /// Chat-template control tokens such as `<|im_start|>` or `[INST]`.
    SpecialToken,
    /// Invisible characters: zero-width, bidirectional overrides, Unicode tag characters.
    HiddenUnicode,
    /// An injection hidden inside base64-encoded text.
    EncodedInstruction,
}

impl Category {
    /// The stable snake_case name of this category.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutsideRoots => "outside_roots",
            Self::SymlinkEscape => "symlink_escape",
            Self::SensitivePath => "sensitive_path",
            Self::DestructiveDelete => "destructive_delete",
            Self::ForkBomb => "fork_bomb",
            Self::DiskFormat => "disk_format",
            Self::DiskOverwrite => "disk_overwrite",
            Self::RemoteCodeExecution => "remote_code_execution",
            Self::ObfuscatedExecution => "obfuscated_execution",
            Self::PermissionWeakening => "permission_weakening",
            Self::CredentialAccess => "credential_access",
            Self::HistoryAccess => "history_access",
            Self::Exfiltration => "exfiltration",
            Self::InstructionOverride => "instruction_override",
            Self::RolePlay => "role_play",
            Self::SystemPromptRequest => "system_prompt_request",
            Self::SpecialToken => "special_token",
            Self::HiddenUnicode => "hidden_unicode",
            Self::EncodedInstruction => "encoded_instruction",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found by a check.
///
/// `start..end` is a byte range into the checked string: the original text for
/// [`scan_text`](crate::scan_text) and [`check_command`](crate::check_command), the resolved path
/// for [`check_path`](crate::check_path). For [`check_argv`](crate::check_argv) it is a range into
/// the arguments joined by single spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind of problem this is.
    pub category: Category,
    /// A short human-readable explanation, lowercase, without trailing period.
    pub reason: String,
    /// Start of the offending range, in bytes.
    pub start: usize,
    /// End of the offending range (exclusive), in bytes.
    pub end: usize,
}

impl Finding {
    pub(crate) fn new(
        category: Category,
        reason: impl Into<String>,
        start: usize,
        end: usize,
    ) -> Self {
        Self {
            category,
            reason: reason.into(),
            start,
            end,
        }
    }
}
