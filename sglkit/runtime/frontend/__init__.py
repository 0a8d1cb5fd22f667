"""Front end of the runtime (caller's process, before and after the scheduler): inputs in, responses out.

Shared by the offline Engine and the HTTP tokenizer manager so both accept, refuse and answer alike.
"""
