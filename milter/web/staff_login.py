"""Staff sign in with the school's own account (``[web] staff_ldap_login = true``).

A school will not keep a second password per teacher: with the directory read from LDAP, a
teacher signs in with their school address and directory password, checked by a bind as
them (``milter.directory_ldap.login``). It gives the ``staff`` role and nothing more; names in
the users file (auditors, admins, statistics, staff accounts made by hand) never go to the
directory, so no directory entry can become one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from milter import directory_ldap, directory_source
from milter.config import Config
from milter.directory import RoleMap
from milter.directory_ldap import LdapSettings
from milter.web.users import User


@dataclass(frozen=True)
class DirectoryLogin:
    settings: LdapSettings
    mapping: RoleMap
    domains: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: Config) -> DirectoryLogin | None:
        """The directory sign-in when the config asks for it, else None."""
        if not cfg.web.staff_ldap_login or cfg.directory.ldap is None:
            return None
        return cls(directory_source.ldap_settings(cfg), directory_source.role_map(cfg),
                   cfg.school.domains)

    def applies(self, name: str) -> bool:
        """An address in one of the school's domains (or below one): only those are looked
        up in the directory; anything else is a users-file name."""
        local, at, domain = name.strip().lower().rpartition("@")
        return bool(at and local) and any(domain == d or domain.endswith("." + d)
                                          for d in self.domains)

    def check(self, name: str, password: str) -> User:
        """The staff user ``name`` signs in as; ``directory_ldap.LoginRefused`` when the
        directory says no, ``directory_ldap.LdapError`` when it cannot be asked."""
        address = name.strip().lower()
        directory_ldap.login(self.settings, self.mapping, address, password)
        return User(address, "staff")

    def recheck(self, name: str) -> None:
        """Before a release: still staff in the directory (``directory_ldap.still_staff``);
        raises as ``check`` does."""
        directory_ldap.still_staff(self.settings, self.mapping, name)
