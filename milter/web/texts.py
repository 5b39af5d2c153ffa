"""The web view's words, Dutch and English (Dutch is the default)."""

from __future__ import annotations

T: dict[str, dict[str, str]] = {
    "nl": {
        "messages": "Berichten", "records": "Registraties", "record": "Registratie",
        "message": "Bericht", "report": "Rapport per persoon", "verify": "Controle",
        "quarantine": "Quarantaine", "dashboard": "Overzicht", "summary": "Maandoverzicht",
        "logout": "Afmelden", "login": "Aanmelden", "user": "Gebruiker",
        "password": "Wachtwoord", "filter": "Zoeken", "reset": "Wissen",
        "since": "Vanaf", "until": "Tot en met", "rule": "Regel", "article": "Artikel",
        "person": "Persoon", "action": "Actie", "direction": "Richting", "outcome": "Afloop",
        "export": "Exporteren", "time": "Tijd", "event": "Gebeurtenis", "sender": "Afzender",
        "recipients": "Ontvangers", "ref": "Referentie", "subject": "Onderwerp",
        "state": "Status", "rules": "Regels", "total": "Totaal",
        "intact": "Audit-keten intact", "broken": "Audit-keten GEBROKEN",
        "release": "Vrijgeven", "delete": "Verwijderen",
        "bad_login": "Onbekende gebruiker of onjuist wachtwoord.",
        "directory_down": "Aanmelden met je schoolaccount lukt nu niet: de accountserver van "
                          "de school is niet bereikbaar. Probeer het over een paar minuten "
                          "opnieuw; lukt het dan nog niet, meld het bij de beheerder.",
        "no_access": "Alleen beheerders mogen berichten vrijgeven of verwijderen.",
        "done": "Gedaan", "next": "Volgende", "prev": "Vorige", "newer": "Nieuwer",
        "older": "Ouder", "newest": "Nieuwste", "evidence": "Bewijs",
        "local_time": "tijden in Nederlandse tijd (Europe/Amsterdam)",
        "date_hint": "dd-mm-jjjj", "pick": "kalender",
        "found": "{total} berichten gevonden; {first}–{last} getoond.",
        "found_none": "Geen berichten gevonden.",
        "why_none": "Er is geen bericht dat aan alle voorwaarden voldoet: {what}.",
        "why_none_all": "De registratie bevat nog geen berichten.",
        "bad_date": "{field}: '{value}' is geen datum; gebruik dd-mm-jjjj (bijv. 27-11-2026).",
        "bad_ref": "Referentie '{value}' kan niet bestaan (alleen letters, cijfers, - en _).",
        "bad_value": "{field}: '{value}' ken ik niet; kies uit {allowed}.",
        "person_means": "persoon '{value}' = {addresses}", "and_more": " en {n} meer",
        "no_person": "Persoon: niemand in de personeelslijst of de registratie past bij "
                     "'{value}'.",
        "violations_of": "overtredingen van {value}",
        "not_found": "Niet gevonden.",
        "no_message": "Geen bericht met referentie {ref}.",
        "not_held": "Bericht {id} is niet (meer) in quarantaine.",
        "what_happened": "Wat er gebeurde", "why": "Waarom", "who_told": "Wie is ingelicht",
        "after": "Wat daarna gebeurde", "nothing_after": "Niets.", "no_notice":
        "Niemand (geen melding verstuurd).", "all_records": "Alle registraties van dit bericht",
        "hashes": "Bewijs-hashes (voor de deskundige)", "held_now": "Nog in quarantaine",
        "open_quarantine": "Bekijk in quarantaine", "mode_monitor": "alleen meten",
        "mode_enforce": "gehandhaafd", "reason": "Reden", "by": "door",
        "summary_line": "{direction} bericht van {sender} aan {recipients} op {when}: {state}.",
        "date": "Datum", "attachments": "Bijlagen", "age": "Leeftijd", "expires": "Verloopt",
        "days": "{n} dagen", "in_days": "over {n} dagen", "expired": "verlopen",
        "preview": "Voorbeeld (alleen tekst, niets wordt geladen)", "headers": "Kopregels",
        "no_text": "Dit bericht heeft geen tekst om te tonen.",
        "confirm_release": "Bericht vrijgeven", "confirm_delete": "Bericht verwijderen",
        "confirm_release_text": "Het bericht wordt ongewijzigd afgeleverd aan de ontvangers. "
                                "Dit wordt vastgelegd met uw naam en reden.",
        "confirm_delete_text": "Het bericht wordt definitief verwijderd. Dit wordt "
                               "vastgelegd met uw naam en reden.",
        "reason_required": "Geef een reden op; die wordt in de registratie vastgelegd.",
        "notify_sender": "Afzender laten weten dat het bericht is vrijgegeven",
        "cancel": "Annuleren", "read_only": "U kunt quarantaine bekijken; alleen beheerders "
                                            "mogen vrijgeven of verwijderen.",
        "released": "Bericht {id} is vrijgegeven: {reply}", "deleted": "Bericht {id} is "
                                                                       "verwijderd.",
        "empty_quarantine": "Er staan geen berichten in quarantaine.",
        "age_1": "jonger dan 1 dag", "age_7": "1–7 dagen", "age_30": "7–30 dagen",
        "age_old": "ouder dan 30 dagen",
        "chart_daily": "Berichten per dag, naar afloop", "chart_notices":
        "Meldingen per dag (verstuurd, ingehouden, mislukt)", "chart_rules": "Berichten per regel",
        "chart_senders": "Afzenders met de meeste overtredingen",
        "chart_articles": "Berichten per artikel per maand",
        "chart_quarantine": "Quarantaine naar leeftijd",
        "period_days": "Periode: de laatste {n} dagen ({first} t/m {today})",
        "held_total": "{n} berichten in quarantaine, samen {kb} kB.",
        "csv": "CSV", "print": "Afdrukken via het menu van de browser",
        "name": "Naam", "private": "Privé-adressen", "notified": "Ingelicht",
        "no_violations": "Geen overtredingen gevonden voor deze persoon in deze periode.",
        "view_records": "registraties", "no": "nee",
        "rows_intact": "Audit-keten intact voor de registraties in dit rapport (hashes en "
                       "schakels naar de vorige en volgende registratie kloppen).",
        "sr_title": "Bericht zelf vrijgeven",
        "sr_login": "Meld je aan om je tegengehouden bericht zelf vrij te geven.",
        "sr_login_school": "Gebruik je e-mailadres van school en het wachtwoord van je "
                           "schoolaccount.",
        "sr_home": "Je bent aangemeld. Open de link uit de melding over je tegengehouden "
                   "bericht om het zelf vrij te geven.",
        "sr_intro": "Dit bericht van je is tegengehouden. Weet je zeker dat het verstuurd mag "
                    "worden? Schrijf hieronder waarom. Het bericht gaat dan meteen weg, "
                    "ongewijzigd, en je leidinggevende krijgt een kopie met je uitleg.",
        "sr_why": "Waarom is het tegengehouden?",
        "sr_reason": "Waarom mag dit bericht toch verstuurd worden? (verplicht)",
        "sr_button": "Vrijgeven en versturen",
        "sr_record": "Het vrijgeven wordt vastgelegd in het logboek van de mailcontrole, met "
                     "je naam en je uitleg.",
        "sr_done": "Je bericht is vrijgegeven en verstuurd. Je leidinggevende krijgt een "
                   "kopie met je uitleg.",
        "sr_reason_required": "Schrijf op waarom het bericht verstuurd mag worden; zonder "
                              "uitleg wordt het niet vrijgegeven.",
        "sr_unknown": "Deze link is onbekend, of het bericht is al vrijgegeven of verwijderd. "
                      "Controleer of je de hele link uit de melding hebt gebruikt.",
        "sr_not_sender": "Alleen de afzender kan een tegengehouden bericht zelf vrijgeven. Je "
                         "bent aangemeld als {user}; dat is niet het adres waarmee het "
                         "bericht is verstuurd. Er is niets vrijgegeven.",
        "sr_not_staff": "Zelf vrijgeven kan alleen de afzender, aangemeld met het eigen "
                        "schooladres. Als beheerder geef je berichten vrij via Quarantaine, "
                        "met een reden.",
        "sr_not_eligible": "Dit bericht kun je niet zelf vrijgeven: het beleid laat dat "
                           "voor deze melding niet toe. Moet het toch verstuurd worden? Mail "
                           "dan naar {postmaster}.",
        "sr_limit": "Je hebt in de afgelopen 24 uur al {n} berichten zelf vrijgegeven; meer "
                    "kan niet. Moet dit bericht toch verstuurd worden? Mail dan naar "
                    "{postmaster}.",
        "sr_left_directory": "Je schoolaccount geeft je nu geen recht meer om berichten zelf "
                             "vrij te geven (het staat niet meer als personeel in de "
                             "accountgegevens van de school). Je bent afgemeld; het bericht "
                             "blijft tegengehouden. Vraag de beheerder ({postmaster}) als dit "
                             "niet klopt.",
        "sr_busy": "Dit bericht wordt op dit moment al vrijgegeven of verwijderd (door de "
                   "beheerder of met je antwoord op de melding). Kijk over een minuut opnieuw "
                   "via deze link.",
        "sr_already": "Dit bericht is al vrijgegeven of verwijderd; er is niets opnieuw "
                      "verstuurd.",
        "sr_failed": "Het bericht kon nu niet worden verstuurd en blijft tegengehouden. "
                     "Probeer het later opnieuw. ({error})",
    },
    "en": {
        "messages": "Messages", "records": "Records", "record": "Record",
        "message": "Message", "report": "Per-person report", "verify": "Verification",
        "quarantine": "Quarantine", "dashboard": "Dashboard", "summary": "Monthly summary",
        "logout": "Log out", "login": "Log in", "user": "User", "password": "Password",
        "filter": "Search", "reset": "Clear",
        "since": "Since", "until": "Until (inclusive)", "rule": "Rule", "article": "Article",
        "person": "Person", "action": "Action", "direction": "Direction",
        "outcome": "Outcome", "export": "Export", "time": "Time", "event": "Event",
        "sender": "Sender", "recipients": "Recipients", "ref": "Reference",
        "subject": "Subject", "state": "State", "rules": "Rules", "total": "Total",
        "intact": "Audit chain intact", "broken": "Audit chain BROKEN",
        "release": "Release", "delete": "Delete",
        "bad_login": "Unknown user or wrong password.",
        "directory_down": "Signing in with your school account does not work just now: the "
                          "school's account server cannot be reached. Try again in a few "
                          "minutes; if it still fails, tell the administrator.",
        "no_access": "Only admins may release or delete messages.",
        "done": "Done", "next": "Next", "prev": "Previous", "newer": "Newer",
        "older": "Older", "newest": "Newest", "evidence": "Evidence",
        "local_time": "times in Dutch local time (Europe/Amsterdam)",
        "date_hint": "dd-mm-yyyy", "pick": "calendar",
        "found": "{total} messages found; showing {first}–{last}.",
        "found_none": "No messages found.",
        "why_none": "No message meets all of: {what}.",
        "why_none_all": "The store holds no messages yet.",
        "bad_date": "{field}: '{value}' is not a date; use dd-mm-yyyy (e.g. 27-11-2026).",
        "bad_ref": "Reference '{value}' cannot exist (letters, digits, - and _ only).",
        "bad_value": "{field}: '{value}' is not known; choose from {allowed}.",
        "person_means": "person '{value}' = {addresses}", "and_more": " and {n} more",
        "no_person": "Person: nobody in the staff directory or the store matches "
                     "'{value}'.",
        "violations_of": "violations by {value}",
        "not_found": "Not found.",
        "no_message": "No message with reference {ref}.",
        "not_held": "Message {id} is not (or no longer) held.",
        "what_happened": "What happened", "why": "Why", "who_told": "Who was told",
        "after": "What happened next", "nothing_after": "Nothing.", "no_notice":
        "Nobody (no notice sent).", "all_records": "All records of this message",
        "hashes": "Evidence hashes (for the expert)", "held_now": "Still held",
        "open_quarantine": "View in quarantine", "mode_monitor": "monitor only",
        "mode_enforce": "enforced", "reason": "Reason", "by": "by",
        "summary_line": "{direction} message from {sender} to {recipients} on {when}: "
                        "{state}.",
        "date": "Date", "attachments": "Attachments", "age": "Age", "expires": "Expires",
        "days": "{n} days", "in_days": "in {n} days", "expired": "expired",
        "preview": "Preview (text only, nothing is loaded)", "headers": "Headers",
        "no_text": "This message has no text to show.",
        "confirm_release": "Release message", "confirm_delete": "Delete message",
        "confirm_release_text": "The message is delivered unchanged to its recipients. "
                                "Your name and reason are recorded.",
        "confirm_delete_text": "The message is deleted for good. Your name and reason are "
                               "recorded.",
        "reason_required": "Give a reason; it is recorded in the audit store.",
        "notify_sender": "Tell the sender the message was released",
        "cancel": "Cancel", "read_only": "You may look at the quarantine; only admins may "
                                         "release or delete.",
        "released": "Message {id} released: {reply}", "deleted": "Message {id} deleted.",
        "empty_quarantine": "No messages are held.",
        "age_1": "under 1 day", "age_7": "1–7 days", "age_30": "7–30 days",
        "age_old": "over 30 days",
        "chart_daily": "Messages per day, by outcome", "chart_notices":
        "Notices per day (sent, held back, failed)", "chart_rules": "Messages per rule",
        "chart_senders": "Senders with the most violations",
        "chart_articles": "Messages per article per month",
        "chart_quarantine": "Quarantine by age",
        "period_days": "Period: the last {n} days ({first} to {today})",
        "held_total": "{n} messages held, {kb} kB together.",
        "csv": "CSV", "print": "Print from the browser's menu",
        "name": "Name", "private": "Private addresses", "notified": "Notified",
        "no_violations": "No violations found for this person in this period.",
        "view_records": "records", "no": "no",
        "rows_intact": "Audit chain intact for the records in this report (their hashes and "
                       "links to the records before and after them hold).",
        "sr_title": "Release your held message",
        "sr_login": "Sign in to release your held message yourself.",
        "sr_login_school": "Use your school email address and your school account's "
                           "password.",
        "sr_home": "You are signed in. Open the link in the notice about your held message "
                   "to release it yourself.",
        "sr_intro": "This message of yours was held. Are you sure it may be sent? Say why "
                    "below. The message then goes out at once, unchanged, and your "
                    "supervisor gets a copy with your explanation.",
        "sr_why": "Why was it held?",
        "sr_reason": "Why may this message be sent after all? (required)",
        "sr_button": "Release and send",
        "sr_record": "The release is recorded in the mail filter's log, with your name and "
                     "your explanation.",
        "sr_done": "Your message was released and sent. Your supervisor gets a copy with "
                   "your explanation.",
        "sr_reason_required": "Say why the message may be sent; without an explanation it "
                              "is not released.",
        "sr_unknown": "This link is unknown, or the message was already released or "
                      "deleted. Check that you used the whole link from the notice.",
        "sr_not_sender": "Only the sender can release a held message themselves. You are "
                         "signed in as {user}, which is not the address the message was "
                         "sent from. Nothing was released.",
        "sr_not_staff": "Only the sender, signed in with their own school address, can "
                        "release a message themselves. As an admin you release messages "
                        "from Quarantine, with a reason.",
        "sr_not_eligible": "You cannot release this message yourself: the policy does not "
                           "allow it for this finding. If it must be sent, write to "
                           "{postmaster}.",
        "sr_limit": "You have already released {n} messages yourself in the last 24 hours; "
                    "no more can be released. If this one must be sent, write to "
                    "{postmaster}.",
        "sr_left_directory": "Your school account no longer lets you release messages "
                             "yourself (it is no longer listed as staff in the school's "
                             "account records). You have been signed out; the message stays "
                             "held. Ask the administrator ({postmaster}) if this is wrong.",
        "sr_busy": "This message is being released or deleted right now (by the "
                   "administrator or by your reply to the notice). Look again through this "
                   "link in a minute.",
        "sr_already": "This message was already released or deleted; nothing was sent "
                      "again.",
        "sr_failed": "The message could not be sent now and stays held. Try again later. "
                     "({error})",
    },
}
